"""Estimator-style anomaly detectors: fit on normal data, score, predict, save, load."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from torch import nn

from anomaly.data.schema import TableSchema, as_frame, invalid_row_reasons
from anomaly.errors import CalibrationError, InvalidRowsError, NotFittedError, SchemaError
from anomaly.models import (
    AutoencoderEnsemble,
    DenseAutoencoder,
    DenseConfig,
    Objective,
    default_dense_layout,
    elementwise_error,
)
from anomaly.models.losses import LOSSES
from anomaly.models.noise import NOISE_KINDS
from anomaly.preprocessing import TabularPreprocessor
from anomaly.scoring import REDUCTIONS, reduce_errors, source_matrix
from anomaly.thresholds import QuantileThreshold, min_calibration_size
from anomaly.training import (
    TrainingConfig,
    TrainingHistory,
    infer_in_batches,
    resolve_device,
    seed_everything,
    train_autoencoder,
)

logger = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("dense",)
NAN_POLICIES: tuple[str, ...] = ("reject", "impute")


def build_module(
    model: str, n_features: int, params: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network for ``model`` and return it with the JSON-able config that rebuilds it."""
    if model != "dense":
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    default_hidden, default_latent = default_dense_layout(n_features)
    config = DenseConfig(
        n_features=n_features,
        hidden_layers=tuple(params["hidden_layers"] or default_hidden),
        latent_dim=params["latent_dim"] or default_latent,
        activation=params["activation"],
        dropout=params["dropout"],
        batch_norm=params["batch_norm"],
        variational=params["variational"],
        output_activation="sigmoid" if params["loss"] == "bce" else None,
    )
    module_config = {**asdict(config), "n_members": params["n_estimators"]}
    return module_from_config(model, module_config), module_config


def module_from_config(model: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from the config :func:`build_module` returned."""
    if model != "dense":
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    options = {k: v for k, v in config.items() if k != "n_members"}
    dense = DenseConfig(**{**options, "hidden_layers": tuple(options["hidden_layers"])})
    n_members = config.get("n_members", 1)
    if n_members == 1:
        return DenseAutoencoder(dense)
    return AutoencoderEnsemble([DenseAutoencoder(dense) for _ in range(n_members)])


class AutoencoderDetector(BaseEstimator):
    """Autoencoder anomaly detector fitted on normal data only.

    The anomaly score of a sample is its reconstruction error (``loss`` per element, reduced
    by ``reduction``): **higher means more anomalous**. ``fit`` splits the normal data into a
    part to train on, a part for early stopping and a calibration part (never trained on)
    whose scores set ``threshold_`` at the chosen quantile.

    Parameters
    ----------
    model : {"dense"}
        Network family.
    hidden_layers : sequence of int, optional
        Encoder widths (the decoder mirrors them). Default: one layer of 64 to 512 units, chosen
        from the input width (see :func:`anomaly.models.default_dense_layout`).
    latent_dim : int, optional
        Size of the latent code. Default: the input width, clipped to 8..32.
    activation, dropout, batch_norm
        Hidden-layer settings.
    variational : bool
        Variational autoencoder (mu/logvar heads, reparameterisation, reconstruction +
        ``kl_weight`` * KL). Scores decode mu, so they are deterministic.
    kl_weight : float
        Beta of the KL term of a variational model.
    noise : {"gaussian", "salt_pepper", "masking", "dropout"}, optional
        Denoising autoencoder: corrupt inputs in training, reconstruct the clean ones.
    noise_factor : float
        Standard deviation (gaussian) or share of corrupted values (the others).
    sparsity_weight, sparsity_target : float
        Sparse autoencoder: weight beta of a KL penalty pulling the mean latent activation to rho.
    loss : {"mse", "mae", "bce"}
        Reconstruction error for training and scoring; ``bce`` needs ``scaler="minmax"``.
    scaler : {"standard", "minmax"}
        Numeric scaling, fitted on the training rows only.
    reduction : {"mean", "max"}
        How per-feature errors become one score.
    n_estimators : int
        Number of independently initialised networks trained side by side; scores average
        their errors. On ADBench's one-class splits 5 members added about 0.01-0.04 AUROC
        where one network was weakest, at 5 times the training cost.
    epochs, batch_size, learning_rate, weight_decay, patience
        Optimisation; training stops after ``patience`` epochs without validation improvement.
    feature_columns : sequence of str, optional
        Features by name; default every numeric column that is not a key.
    categorical_columns : sequence of str, optional
        Columns to one-hot encode (string columns named in ``feature_columns`` are too).
    key_columns : sequence of str
        Columns passed through to scored outputs (ids, timestamps); never features.
    nan_policy : {"reject", "impute"}
        Rows with missing or non-finite features: set aside with a reason, or imputed with
        the training median (numeric) or an unknown category (categorical).
    device : str
        ``"auto"`` (CUDA, then MPS, then CPU) or a torch device string.
    mixed_precision : bool or "auto"
        bf16 autocast in training; ``"auto"`` turns it on for CUDA only. Scores are always
        computed in float32, so a threshold calibrated on one device holds on another.
    random_state : int
        Seeds the data split, weight initialisation and batch order.
    verbose : bool, optional
        Progress bar during training; default only when attached to a terminal.
    """

    def __init__(
        self,
        model: str = "dense",
        hidden_layers: Sequence[int] | None = None,
        latent_dim: int | None = None,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        variational: bool = False,
        kl_weight: float = 1.0,
        noise: str | None = None,
        noise_factor: float = 0.1,
        sparsity_weight: float = 0.0,
        sparsity_target: float = 0.05,
        loss: str = "mse",
        scaler: str = "standard",
        reduction: str = "mean",
        n_estimators: int = 1,
        epochs: int = 100,
        batch_size: int = 64,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.0,
        patience: int = 10,
        feature_columns: Sequence[str] | None = None,
        categorical_columns: Sequence[str] | None = None,
        key_columns: Sequence[str] = (),
        nan_policy: str = "reject",
        device: str = "auto",
        mixed_precision: bool | Literal["auto"] = "auto",
        random_state: int = 0,
        verbose: bool | None = None,
    ):
        self.model = model
        self.hidden_layers = hidden_layers
        self.latent_dim = latent_dim
        self.activation = activation
        self.dropout = dropout
        self.batch_norm = batch_norm
        self.variational = variational
        self.kl_weight = kl_weight
        self.noise = noise
        self.noise_factor = noise_factor
        self.sparsity_weight = sparsity_weight
        self.sparsity_target = sparsity_target
        self.loss = loss
        self.scaler = scaler
        self.reduction = reduction
        self.n_estimators = n_estimators
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patience = patience
        self.feature_columns = feature_columns
        self.categorical_columns = categorical_columns
        self.key_columns = key_columns
        self.nan_policy = nan_policy
        self.device = device
        self.mixed_precision = mixed_precision
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fitting
    def _validate_params(self) -> None:
        choices = {
            "model": (self.model, MODELS),
            "loss": (self.loss, LOSSES),
            "reduction": (self.reduction, REDUCTIONS),
            "nan_policy": (self.nan_policy, NAN_POLICIES),
            "scaler": (self.scaler, ("standard", "minmax")),
            "noise": (self.noise, (None, *NOISE_KINDS)),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.loss == "bce" and self.scaler != "minmax":
            raise ValueError("loss='bce' needs data in [0, 1]: set scaler='minmax'")
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be at least 1, got {self.n_estimators}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}"
            )

    def fit(
        self,
        X: pd.DataFrame | np.ndarray,
        y: None = None,
        *,
        quantile: float = 0.95,
        validation_fraction: float = 0.1,
        calibration_fraction: float = 0.2,
    ) -> AutoencoderDetector:
        """Fit on normal samples and calibrate the threshold.

        Parameters
        ----------
        X : DataFrame or array of shape (n_samples, n_features)
            Normal data only.
        y : None
            Ignored; accepted for scikit-learn compatibility.
        quantile : float
            Quantile of calibration scores used as ``threshold_`` (expected false-positive rate
            on normal data is ``1 - quantile``).
        validation_fraction : float
            Share of rows held out for early stopping (0 to stop on the training loss).
        calibration_fraction : float
            Share of rows held out for the threshold; these are never trained on.

        Returns
        -------
        self
        """
        self._validate_params()
        if not (
            0 < calibration_fraction < 1
            and 0 <= validation_fraction < 1
            and calibration_fraction + validation_fraction < 1
        ):
            raise ValueError(
                "need 0 < calibration_fraction < 1, 0 <= validation_fraction < 1 and their sum < 1, "
                f"got {calibration_fraction} and {validation_fraction}"
            )
        frame = as_frame(X)
        schema = TableSchema.infer(
            frame, self.feature_columns, self.categorical_columns, self.key_columns
        )
        reasons = invalid_row_reasons(frame, schema)
        bad = (reasons != "").to_numpy()
        if bad.any() and self.nan_policy == "reject":
            logger.warning(
                "fit: leaving out %d of %d rows with missing or non-finite features (first: row %s, %s)",
                bad.sum(),
                len(frame),
                frame.index[bad][0],
                reasons[bad].iloc[0],
            )
            frame = frame.loc[~bad]
        # Rows of (the possibly filtered) frame whose features are all finite; only the impute
        # policy leaves any others in.
        valid = np.ones(len(frame), dtype=bool) if self.nan_policy == "reject" else ~bad
        n = len(frame)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n)
        n_cal = round(n * calibration_fraction)
        n_val = round(n * validation_fraction)
        cal_rows, val_rows, fit_rows = (
            order[:n_cal],
            order[n_cal : n_cal + n_val],
            order[n_cal + n_val :],
        )
        needed = min_calibration_size(quantile)
        if n_cal < needed:
            # Checked before training, which may take long, rather than after it.
            raise CalibrationError(
                f"quantile {quantile} needs at least {needed} calibration samples, got {n_cal} "
                f"({calibration_fraction:g} of {n} usable rows); lower the quantile or give more "
                "normal data (or a larger calibration_fraction)"
            )
        if len(fit_rows) < 2:
            raise ValueError(
                f"too few normal rows to train: {n} usable rows, {len(fit_rows)} left for fitting"
            )
        impute = self.nan_policy == "impute"
        fit_frame = frame.iloc[fit_rows]
        clean_fit = fit_frame.loc[valid[fit_rows]]
        preprocessor = TabularPreprocessor(schema, scaler=self.scaler).fit(clean_fit)  # type: ignore[arg-type]

        params = self.get_params()
        seed_everything(self.random_state)  # weight initialisation is part of what the seed fixes
        module, module_config = build_module(self.model, preprocessor.n_outputs, params)
        objective = Objective(
            loss=self.loss,  # type: ignore[arg-type]
            noise=self.noise,  # type: ignore[arg-type]
            noise_factor=self.noise_factor,
            sparsity_weight=self.sparsity_weight,
            sparsity_target=self.sparsity_target,
            kl_weight=self.kl_weight,
        )
        training = TrainingConfig(
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
        X_fit = preprocessor.transform(fit_frame, impute=impute)
        X_val = preprocessor.transform(frame.iloc[val_rows], impute=impute) if n_val else None
        self.history_: TrainingHistory = train_autoencoder(
            module, objective, X_fit, X_val, training
        )

        self.schema_ = schema
        self.preprocessor_ = preprocessor
        self.module_ = module
        self.module_config_ = module_config
        self.objective_ = objective
        self.device_ = resolve_device(self.device)
        self.n_features_in_ = len(schema.features)
        self.feature_names_in_ = np.asarray(schema.feature_names, dtype=object)

        cal_scores, _ = self._score_encoded(
            preprocessor.transform(frame.iloc[cal_rows], impute=impute)
        )
        self.thresholder_ = QuantileThreshold(quantile).fit(cal_scores)
        self.threshold_ = self.thresholder_.threshold_
        # Row labels of each part, so a caller can check calibration rows were never trained on.
        self.split_index_ = {
            "fit": frame.index[fit_rows],
            "validation": frame.index[val_rows],
            "calibration": frame.index[cal_rows],
        }
        self.fit_info_ = {
            "n_rows": len(bad),
            "n_rejected": int(bad.sum()) if not impute else 0,
            "n_fit": len(fit_rows),
            "n_validation": len(val_rows),
            "n_calibration": len(cal_rows),
            "quantile": quantile,
        }
        return self

    # ------------------------------------------------------------------ scoring
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

    def _encode(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        frame = self._frame(X)
        self.schema_.validate(frame, require_keys=False)
        impute = self.nan_policy == "impute"
        if not impute:
            reasons = invalid_row_reasons(frame, self.schema_)
            bad = (reasons != "").to_numpy()
            if bad.any():
                raise InvalidRowsError(
                    f"{int(bad.sum())} of {len(frame)} rows cannot be scored (first: row {frame.index[bad][0]}: "
                    f"{reasons[bad].iloc[0]}); use nan_policy='impute', or anomaly.scoring.score_frame "
                    "to set such rows aside with a reason"
                )
        return self.preprocessor_.transform(frame, impute=impute)

    def _score_encoded(
        self, X_encoded: np.ndarray, attribute: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores ``(n,)`` and, with ``attribute``, per-input-column errors ``(n, n_features_in_)``.

        Both are reduced on the device, so only ``n * (1 + n_features_in_)`` floats come back.
        """
        module, loss, reduction = self.module_, self.objective_.loss, self.reduction
        sources = source_matrix(
            self.preprocessor_.output_sources_, len(self.preprocessor_.input_names_)
        ).to(self.device_)

        def score(batch: torch.Tensor) -> torch.Tensor:
            errors = elementwise_error(module(batch).x_hat, batch, loss)
            if errors.dim() == 3:  # an ensemble: (n_members, n, d) -> mean over members
                errors = errors.mean(dim=0)
            scores = reduce_errors(errors, reduction).unsqueeze(1)  # type: ignore[arg-type]
            return torch.cat([scores, errors @ sources], dim=1) if attribute else scores

        # float32 even where training used bf16: the threshold was calibrated on these numbers
        # and must mean the same on every device the model is later loaded on.
        out = infer_in_batches(
            score,
            module,
            X_encoded,
            max(self.batch_size, 4096),
            self.device_,
            mixed_precision=False,
        )
        return out[:, 0].astype(np.float64), out[:, 1:]

    def score_samples(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Anomaly score per sample, shape ``(n_samples,)``; higher means more anomalous."""
        self._check_fitted()
        return self._score_encoded(self._encode(X))[0]

    def feature_errors(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """Reconstruction error per input feature ``(n_samples, n_features_in_)``.

        One-hot columns are summed back onto their categorical column. Large values show which
        features made a sample anomalous.
        """
        self._check_fitted()
        frame = self._frame(X)
        per_feature = self._score_encoded(self._encode(frame), attribute=True)[1]
        return pd.DataFrame(per_feature, columns=self.preprocessor_.input_names_, index=frame.index)

    def predict(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """``True`` where the score is above ``threshold_``; shape ``(n_samples,)``."""
        self._check_fitted()
        return self.thresholder_.predict(self.score_samples(X))

    def p_values(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Conformal p-value per sample from the calibration scores; small means anomalous."""
        self._check_fitted()
        return self.thresholder_.p_values(self.score_samples(X))

    def latent(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Latent code per sample ``(n_samples, latent_dim)`` (the mean for a variational model).

        For an ensemble, the members' codes side by side: ``(n_samples, n_estimators * latent_dim)``.
        """
        self._check_fitted()
        module = self.module_

        def codes(batch: torch.Tensor) -> torch.Tensor:
            z = module(batch).z
            return z.permute(1, 0, 2).reshape(len(batch), -1) if z.dim() == 3 else z

        return infer_in_batches(
            codes,
            module,
            self._encode(X),
            4096,
            self.device_,
            mixed_precision=False,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save to a directory: weights (safetensors), preprocessor (skops), JSON config and threshold."""
        from anomaly.persistence import save_detector

        self._check_fitted()
        save_detector(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "auto") -> AutoencoderDetector:
        """Load a detector saved with :meth:`save`; no pickle is involved."""
        from anomaly.persistence import load_detector

        return load_detector(path, device=device)
