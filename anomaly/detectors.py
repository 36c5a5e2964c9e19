"""Estimator-style anomaly detectors: fit on normal data, score, predict, save, load.

:class:`AutoencoderDetector` is a façade: its constructor holds every parameter, and each method
hands the work to the data kind the parameters select (:mod:`anomaly.kinds`): tables, series
(``window`` set) or images (an image ``model``). Networks are built in :mod:`anomaly.models.build`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from anomaly.data.schema import as_frame
from anomaly.data.windows import POINT_REDUCTIONS
from anomaly.errors import ModelFileError
from anomaly.kinds.base import RowErrors
from anomaly.kinds.images import ImageKind
from anomaly.kinds.series import SeriesKind
from anomaly.kinds.tabular import TabularKind
from anomaly.models import IMAGE_MODELS
from anomaly.models.build import MODELS, SERIES_MODELS, build_module, module_from_config
from anomaly.models.losses import IMAGE_LOSSES, LOSSES
from anomaly.models.noise import NOISE_KINDS
from anomaly.reduction import REDUCTIONS, topk_count
from anomaly.training import infer_in_batches

__all__ = [
    "MODELS",
    "NAN_POLICIES",
    "SERIES_MODELS",
    "AutoencoderDetector",
    "build_module",
    "module_from_config",
]

NAN_POLICIES: tuple[str, ...] = ("reject", "impute")


class AutoencoderDetector(TabularKind, SeriesKind, ImageKind):
    """Autoencoder anomaly detector fitted on normal data only.

    The anomaly score of a sample is its reconstruction error (``loss`` per element, reduced
    by ``reduction``): **higher means more anomalous**. ``fit`` splits the normal data into a
    part to train on, a part for early stopping and a calibration part (never trained on)
    whose scores set ``threshold_`` at the chosen quantile.

    **Time series.** With ``window`` set the detector works on windows of a series: rows are
    points (ordered by ``time_column``, grouped by ``series_column``), the network reconstructs
    ``window`` consecutive points, and each row's score is ``point_reduction`` over the errors
    of the point in every window that covers it (each step's error is first reduced over
    features by ``reduction``). Scores stay one per input row, aligned with it. See
    :meth:`score_samples` for carrying context from one batch to the next.

    Parameters
    ----------
    model : {"dense", "lstm_seq2seq", "conv1d", "conv"}
        Network family. ``lstm_seq2seq`` and ``conv1d`` need ``window``; ``dense`` with a
        ``window`` reconstructs flattened windows.
    hidden_layers : sequence of int, optional
        Dense: encoder widths (the decoder mirrors them); default one layer of 64 to 512 units,
        chosen from the input width (see :func:`anomaly.models.default_dense_layout`).
        lstm_seq2seq: one entry per LSTM layer, all equal (default ``(64, 64)``). conv1d:
        channels of the strided convolutions (default ``(32, 16)``).
    latent_dim : int, optional
        Code size (dense, lstm_seq2seq); default width - 1 <= 32 (dense), 8..32 (lstm).
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
    reduction : {"mean", "max", "topk"}
        How a row's element errors (a table row's encoded columns, a time step's features, an
        image's pixels) become its score; ``topk`` averages the largest ``topk_fraction`` of them.
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
    window : int, optional
        Points per window; set it to model a time series (see above).
    stride : int
        Step between training windows (scoring always uses every window).
    time_column, series_column : str, optional
        Timestamp column (datetime or numeric; None: rows are in time order) and series id
        column (None: one series). Both are passed through to scored outputs.
    point_reduction : {"mean", "max", "min", "last"}
        How the errors of one point in the windows that cover it become its score: ``mean``,
        ``max`` or ``min`` over all of them (``min``: flagged only when every covering window
        is), or ``last``, the window ending at the point (causal: a point's score never depends
        on later points).
    series_scaling : {"global", "per_series"}
        Fit the scaler on all series together or on each series id separately.
    duplicate_policy : {"reject", "first", "last", "mean"}
        Rows with the same series and timestamp: reject all but the first, or merge them.
    gap_policy : {"split", "resample", "ignore"}
        A step longer than ``gap_tolerance`` x ``frequency``: no window spans it, points are inserted on the
        frequency grid (filled by ``gap_fill``, never output), or it is ignored.
    gap_fill : {"linear", "ffill"}
        How inserted points are filled under ``gap_policy="resample"``.
    frequency : str or float, optional
        Expected step (a pandas offset such as ``"1s"``, or seconds); default: the median step
        of the training data.
    gap_tolerance : float
        Steps up to this many times ``frequency`` are not gaps (default 2.5: one missed
        sample passes as jitter).
    kernel_size : int
        Time steps per convolution kernel (conv1d).
    image_size : (int, int), optional
        Images (``model="conv"``): ``(height, width)``; default the size of the images ``fit``
        gets. Files of another size are resized to it when read (:mod:`anomaly.data.images`).
        Images take arrays ``(n, H, W)`` or ``(n, C, H, W)``, uint8 or float in [0, 1], score
        from per-pixel errors (:meth:`error_maps`) and have no table schema.
    channels : {1, 3}
        Images: grayscale or RGB.
    conv_channels : sequence of int, optional
        Images: widths of the stride-2 convolutions (default ``(32, 64)``); ``latent_dim``
        defaults to 32 for images. ``loss="ssim"`` is for images only.
    ssim_weight : float
        Images, ``loss="ssim"``: share of the SSIM term in the per-pixel error, the rest
        squared error (1 = pure SSIM).
    topk_fraction : float
        ``reduction="topk"``: the share of a row's largest element errors averaged, at least one,
        for every kind (columns, features per time step, pixels).
    image_column : str
        Images in Parquet files: the column holding encoded image bytes.
    threshold : {"quantile", "pot"}
        Conformal quantile, or a fitted tail (:class:`~anomaly.thresholds.PotThreshold`).
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
        window: int | None = None,
        stride: int = 1,
        time_column: str | None = None,
        series_column: str | None = None,
        point_reduction: str = "mean",
        series_scaling: str = "global",
        duplicate_policy: str = "reject",
        gap_policy: str = "split",
        gap_fill: str = "linear",
        frequency: str | float | None = None,
        gap_tolerance: float = 2.5,
        kernel_size: int = 7,
        # images (model="conv")
        image_size: tuple[int, int] | None = None,
        channels: int = 1,
        conv_channels: Sequence[int] | None = None,
        ssim_weight: float = 1.0,
        topk_fraction: float = 0.05,
        image_column: str = "image",
        threshold: Literal["quantile", "pot"] = "quantile",
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
        self.window = window
        self.stride = stride
        self.time_column = time_column
        self.series_column = series_column
        self.point_reduction = point_reduction
        self.series_scaling = series_scaling
        self.duplicate_policy = duplicate_policy
        self.gap_policy = gap_policy
        self.gap_fill = gap_fill
        self.frequency = frequency
        self.gap_tolerance = gap_tolerance
        self.kernel_size = kernel_size
        # images
        self.image_size = image_size
        self.channels = channels
        self.conv_channels = conv_channels
        self.ssim_weight = ssim_weight
        self.topk_fraction = topk_fraction
        self.image_column = image_column
        self.threshold = threshold

    # ------------------------------------------------------------------ fitting
    def _validate_params(self) -> None:
        choices = {
            "model": (self.model, MODELS),
            "loss": (self.loss, LOSSES),
            "reduction": (self.reduction, REDUCTIONS),
            "nan_policy": (self.nan_policy, NAN_POLICIES),
            "scaler": (self.scaler, ("standard", "minmax")),
            "noise": (self.noise, (None, *NOISE_KINDS)),
            "point_reduction": (self.point_reduction, POINT_REDUCTIONS),
            "series_scaling": (self.series_scaling, ("global", "per_series")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if self.model in IMAGE_MODELS:
            self._validate_image_params()
        elif self.loss in IMAGE_LOSSES:
            raise ValueError(f"loss={self.loss!r} needs an image model {IMAGE_MODELS}")
        elif self.loss == "bce" and self.scaler != "minmax":
            raise ValueError("loss='bce' needs data in [0, 1]: set scaler='minmax'")
        topk_count(1, self.topk_fraction)  # a fraction outside (0, 1] fails here, by name
        if self.n_estimators < 1:
            raise ValueError(f"n_estimators must be at least 1, got {self.n_estimators}")
        if self.model in SERIES_MODELS and self.window is None:
            raise ValueError(f"model {self.model!r} works on windows of a series: set window")
        if self.window is not None and (self.window < 2 or self.stride < 1):
            raise ValueError(
                f"window must be at least 2 and stride positive, got {self.window} and {self.stride}"
            )
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
        if self.model in IMAGE_MODELS:
            self._fit_images(X, quantile, validation_fraction, calibration_fraction)
        elif self.window is not None:
            self._fit_series(as_frame(X), quantile, validation_fraction, calibration_fraction)
        else:
            # The table fit keeps copies of its parts, never the frame: no copy of the array.
            self._fit_table(
                as_frame(X, copy=False), quantile, validation_fraction, calibration_fraction
            )
        return self

    # ------------------------------------------------------------------ scoring
    def score_samples(
        self, X: pd.DataFrame | np.ndarray, context: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Anomaly score per sample, shape ``(n_samples,)``; higher means more anomalous.

        For a time-series detector, one score per row of ``X`` in its order; ``context`` (from
        :meth:`next_context` on the previous batch) supplies the points before this batch, so
        its first rows score as if the two batches were one.
        """
        self._check_fitted()
        if self.model in IMAGE_MODELS:
            return self._image_scores(self._as_images(X))
        if self.window is not None:
            return self._series_values(X, context)[:, 0].astype(np.float64)
        return self._score_encoded(self._encode(X))[0]

    def _row_errors(
        self, frame: pd.DataFrame, context: pd.DataFrame | None = None, source: str | None = None
    ) -> RowErrors:
        """The kind's errors for a batch checked against the schema: the scoring engine's input."""
        if self.window is not None:
            return self._series_row_errors(frame, context, source)
        return self._table_row_errors(frame)

    def feature_errors(
        self, X: pd.DataFrame | np.ndarray, context: pd.DataFrame | None = None
    ) -> pd.DataFrame:
        """Reconstruction error per input feature ``(n_samples, n_features_in_)``.

        One-hot columns are summed back onto their categorical column. Large values show which
        features made a sample anomalous. For time series, each point's per-feature error is
        folded over windows like its score. Images: see :meth:`error_maps`.
        """
        self._check_fitted()
        if self.model in IMAGE_MODELS:
            raise TypeError("feature_errors is for tables; use error_maps for images")
        frame = self._frame(X)
        if self.window is not None:
            per_feature = self._series_values(frame, context)[:, 1:]
            return pd.DataFrame(per_feature, columns=self.schema_.feature_names, index=frame.index)
        per_feature = self._score_encoded(self._encode(frame), attribute=True)[1]
        return pd.DataFrame(per_feature, columns=self.preprocessor_.input_names_, index=frame.index)

    def predict(
        self, X: pd.DataFrame | np.ndarray, context: pd.DataFrame | None = None
    ) -> np.ndarray:
        """``True`` where the score is above ``threshold_``; shape ``(n_samples,)``."""
        self._check_fitted()
        return self.thresholder_.predict(self.score_samples(X, context))

    def p_values(
        self, X: pd.DataFrame | np.ndarray, context: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Conformal p-value per sample from the calibration scores; small means anomalous."""
        self._check_fitted()
        return self.thresholder_.p_values(self.score_samples(X, context))

    def latent(
        self, X: pd.DataFrame | np.ndarray, context: pd.DataFrame | None = None
    ) -> np.ndarray:
        """Latent code per sample ``(n_samples, latent_dim)`` (the mean for a variational model).

        For an ensemble, the members' codes side by side: ``(n_samples, n_estimators * latent_dim)``.
        For time series, the code of the window ending at each row (NaN for rows with fewer than
        ``window - 1`` points before them).
        """
        self._check_fitted()
        if self.window is not None:
            return self._series_values(X, context, codes=True)
        module = self.module_
        encoded = self._as_images(X) if self.model in IMAGE_MODELS else self._encode(X)

        def codes(batch: torch.Tensor) -> torch.Tensor:
            return self._member_codes(module(batch).z)

        return infer_in_batches(
            codes,
            module,
            encoded,
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
        from anomaly.persistence import load_fitted

        params, fitted = load_fitted(path, module_from_config, device=device)
        try:
            detector = cls(**params)
        except TypeError as exc:  # a parameter this version does not know
            raise ModelFileError(
                f"{os.fspath(path)}/detector.json: invalid parameters ({exc})"
            ) from exc
        for name, value in fitted.items():
            setattr(detector, name, value)
        return detector
