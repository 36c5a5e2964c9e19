"""What every data kind shares: the detector's parameters and fitted state, and the training engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from torch import nn

from anomaly.data.schema import TableSchema, as_frame
from anomaly.errors import CalibrationError, NotFittedError, SchemaError
from anomaly.models import Objective
from anomaly.preprocessing import TabularPreprocessor
from anomaly.thresholds import (
    QuantileThreshold,
    calibration_need,
    make_threshold,
    min_calibration_size,
)
from anomaly.training import (
    TrainingConfig,
    TrainingHistory,
    resolve_device,
    seed_everything,
    train_autoencoder,
)


@dataclass(frozen=True)
class RowErrors:
    """What a data kind gives the scoring engine for a batch: errors of the rows it could score.

    Every kind folds its element errors (encoded columns, a time step's features, pixels) onto
    input rows through :mod:`anomaly.reduction`, so one engine builds every output from this.
    """

    ok: np.ndarray  # (n,) bool: the row was scored
    scores: np.ndarray  # (n_ok,) float64
    per_feature: np.ndarray  # (n_ok, n_features) error per input feature
    reasons: np.ndarray  # (n - n_ok,) object: why each other row was set aside
    feature_names: tuple[str, ...]
    # Layout counts of a series batch (rows per series, duplicates, gaps); empty for tables.
    counts: dict[str, int] = field(default_factory=dict)
    # Series keep their points' per-feature errors in the output for the events' attribution.
    point_errors: bool = False


def random_split(
    n: int, calibration_fraction: float, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the calibration, validation and fitting parts of ``n`` rows, drawn at random."""
    order = np.random.default_rng(seed).permutation(n)
    n_cal = round(n * calibration_fraction)
    n_val = round(n * validation_fraction)
    return order[:n_cal], order[n_cal : n_cal + n_val], order[n_cal + n_val :]


class DetectorBase(BaseEstimator):
    """Parameters and fitted state every kind reads, and the steps of ``fit`` they all share."""

    # Hyperparameters (set by AutoencoderDetector.__init__; declared here for the kinds).
    model: str
    hidden_layers: Sequence[int] | None
    latent_dim: int | None
    loss: str
    noise: str | None
    noise_factor: float
    sparsity_weight: float
    sparsity_target: float
    kl_weight: float
    ssim_weight: float
    scaler: str
    reduction: str
    topk_fraction: float
    n_estimators: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    patience: int
    feature_columns: Sequence[str] | None
    categorical_columns: Sequence[str] | None
    key_columns: Sequence[str]
    nan_policy: str
    device: str
    mixed_precision: bool | Literal["auto"]
    random_state: int
    verbose: bool | None
    window: int | None
    stride: int
    time_column: str | None
    series_column: str | None
    point_reduction: str
    series_scaling: str
    duplicate_policy: str
    gap_policy: str
    gap_fill: str
    frequency: str | float | None
    gap_tolerance: float
    image_size: Any
    channels: int
    image_column: str
    threshold: str

    # Fitted state.
    module_: nn.Module
    module_config_: dict[str, Any]
    objective_: Objective
    device_: torch.device
    history_: TrainingHistory
    thresholder_: QuantileThreshold
    threshold_: float
    schema_: TableSchema
    preprocessor_: TabularPreprocessor
    n_features_in_: int
    feature_names_in_: np.ndarray
    split_index_: dict[str, Any]
    fit_info_: dict[str, Any]

    def _check_fitted(self) -> None:
        if not hasattr(self, "thresholder_"):
            raise NotFittedError(
                f"This {type(self).__name__} is not fitted yet; call fit with normal data first"
            )

    def _frame(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        if isinstance(X, pd.DataFrame):
            return as_frame(X)
        array = np.asarray(X)
        if array.ndim != 2 or array.shape[1] != self.n_features_in_:
            raise SchemaError(
                f"expected an array of shape (n_samples, {self.n_features_in_}) with columns "
                f"{list(self.feature_names_in_)}, found shape {array.shape}"
            )
        return pd.DataFrame(array, columns=list(self.feature_names_in_))

    def _objective(self) -> Objective:
        return Objective(
            loss=self.loss,  # type: ignore[arg-type]
            noise=self.noise,  # type: ignore[arg-type]
            noise_factor=self.noise_factor,
            sparsity_weight=self.sparsity_weight,
            sparsity_target=self.sparsity_target,
            kl_weight=self.kl_weight,
        )

    def _training_config(self) -> TrainingConfig:
        return TrainingConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            patience=self.patience,
            device=self.device,
            mixed_precision=self.mixed_precision,
            seed=self.random_state,
            progress=self.verbose,
        )

    def _check_calibration_size(self, n_cal: int, quantile: float, what: str, detail: str) -> None:
        """Refuse before training (which may take long) when the calibration part is too small."""
        if n_cal < min_calibration_size(quantile, self.threshold):
            raise CalibrationError(
                f"{calibration_need(self.threshold, quantile)} calibration {what}, got {n_cal} "
                f"{detail}"
            )

    def _train_network(
        self,
        build: Callable[[], tuple[nn.Module, dict[str, Any]]],
        objective: Objective,
        X_fit: np.ndarray,
        X_val: np.ndarray | None,
    ) -> None:
        """Seed, build and train the network; set the fitted network state."""
        seed_everything(self.random_state)  # weight initialisation is part of what the seed fixes
        module, module_config = build()
        self.history_ = train_autoencoder(module, objective, X_fit, X_val, self._training_config())
        self.module_ = module
        self.module_config_ = module_config
        self.objective_ = objective
        self.device_ = resolve_device(self.device)

    def _calibrate(self, scores: np.ndarray, quantile: float) -> None:
        self.thresholder_ = make_threshold(self.threshold, quantile).fit(scores)
        self.threshold_ = self.thresholder_.threshold_

    def _member_mean(self, errors: torch.Tensor) -> torch.Tensor:
        """An ensemble's errors ``(n_members, ...)`` averaged over its members; others unchanged.

        Decided by the member count the network was built with, not by the tensor's rank, so a
        kind whose single-network errors have one more axis is not mistaken for an ensemble.
        """
        if self.module_config_.get("n_members", 1) > 1:
            return errors.mean(dim=0)
        return errors

    def _member_codes(self, z: torch.Tensor) -> torch.Tensor:
        """An ensemble's codes ``(n_members, n, latent)`` side by side ``(n, n_members * latent)``."""
        if self.module_config_.get("n_members", 1) > 1:
            return z.permute(1, 0, 2).reshape(z.shape[1], -1)
        return z
