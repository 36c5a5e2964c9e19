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
from anomaly.data.series import (
    SeriesLayout,
    SeriesPolicy,
    build_layout,
    context_frame,
    infer_frequency,
)
from anomaly.data.windows import POINT_REDUCTIONS, PointFold, sliding_windows
from anomaly.errors import (
    CalibrationError,
    InvalidRowsError,
    ModelFileError,
    NotFittedError,
    SchemaError,
)
from anomaly.image_detector import (
    IMAGE_MODELS,
    ImageDetectorMixin,
    build_image_module,
    image_module_from_config,
)
from anomaly.models import (
    DenseAutoencoder,
    DenseConfig,
    Objective,
    default_dense_layout,
    default_sequence_latent,
    elementwise_error,
    ensemble_of,
)
from anomaly.models.losses import IMAGE_LOSSES, LOSSES
from anomaly.models.noise import NOISE_KINDS
from anomaly.models.sequence import (
    Conv1dAutoencoder,
    Conv1dConfig,
    LSTMSeq2SeqAutoencoder,
    LSTMSeq2SeqConfig,
    WindowedDense,
)
from anomaly.preprocessing import SeriesScaler, TabularPreprocessor
from anomaly.reduction import REDUCTIONS, reduce_errors, reduce_last, source_matrix, topk_count
from anomaly.thresholds import calibration_need, make_threshold, min_calibration_size
from anomaly.training import (
    TrainingConfig,
    TrainingHistory,
    infer_in_batches,
    resolve_device,
    seed_everything,
    to_device_tensor,
    train_autoencoder,
)

logger = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("dense", "lstm_seq2seq", "conv1d", *IMAGE_MODELS)
# Families that only make sense on windows of a series.
SERIES_MODELS: tuple[str, ...] = ("lstm_seq2seq", "conv1d")
NAN_POLICIES: tuple[str, ...] = ("reject", "impute")


def build_module(
    model: str, n_features: int, params: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network for ``model`` and return it with the JSON-able config that rebuilds it.

    ``n_features`` is the encoded width of a row; for windows (``params["window"]`` set) it is
    the number of series features, and the network takes ``(n, window, n_features)``. For image
    models ``params["channels"]`` and ``params["image_size"]`` give the shape.
    """
    if model in IMAGE_MODELS:
        shape = (params["channels"], *params["image_size"])
        image_config = build_image_module(params, shape)
        return image_module_from_config(image_config), image_config
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    window = params.get("window")
    options: dict[str, Any]
    if model == "lstm_seq2seq":
        sizes = tuple(params["hidden_layers"] or (64, 64))
        if len(set(sizes)) != 1:
            raise ValueError(
                f"lstm_seq2seq stacks LSTM layers of one width: hidden_layers must repeat one size, got {sizes}"
            )
        options = asdict(
            LSTMSeq2SeqConfig(
                n_features=n_features,
                hidden_size=sizes[0],
                num_layers=len(sizes),
                latent_dim=params["latent_dim"] or default_sequence_latent(n_features),
                dropout=params["dropout"],
                variational=params["variational"],
            )
        )
    elif model == "conv1d":
        if params["latent_dim"] is not None or params["variational"]:
            raise ValueError(
                "conv1d's code is its last feature map: set hidden_layers (channels), not "
                "latent_dim; it has no variational variant"
            )
        options = asdict(
            Conv1dConfig(
                n_features=n_features,
                channels=tuple(params["hidden_layers"] or (32, 16)),
                kernel_size=params["kernel_size"],
                dropout=params["dropout"],
            )
        )
    else:
        width = n_features * (window or 1)
        default_hidden, default_latent = default_dense_layout(width)
        options = asdict(
            DenseConfig(
                n_features=width,
                hidden_layers=tuple(params["hidden_layers"] or default_hidden),
                latent_dim=params["latent_dim"] or default_latent,
                activation=params["activation"],
                dropout=params["dropout"],
                batch_norm=params["batch_norm"],
                variational=params["variational"],
                output_activation="sigmoid" if params["loss"] == "bce" else None,
            )
        )
    module_config = {**options, "n_members": params["n_estimators"], "window": window}
    return module_from_config(model, module_config), module_config


def module_from_config(model: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from the config :func:`build_module` returned."""
    if model in IMAGE_MODELS:
        return image_module_from_config(config)
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    options = {k: v for k, v in config.items() if k not in ("n_members", "window")}
    window = config.get("window")

    def one() -> nn.Module:
        if model == "lstm_seq2seq":
            return LSTMSeq2SeqAutoencoder(LSTMSeq2SeqConfig(**options))
        if model == "conv1d":
            return Conv1dAutoencoder(
                Conv1dConfig(**{**options, "channels": tuple(options["channels"])})
            )
        dense = DenseConfig(**{**options, "hidden_layers": tuple(options["hidden_layers"])})
        return WindowedDense(dense, window) if window else DenseAutoencoder(dense)

    n_members = config.get("n_members", 1)
    if n_members == 1:
        return one()
    return ensemble_of([one() for _ in range(n_members)])


class AutoencoderDetector(ImageDetectorMixin, BaseEstimator):
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
            return self._fit_images(X, quantile, validation_fraction, calibration_fraction)
        if self.window is not None:
            return self._fit_series(
                as_frame(X), quantile, validation_fraction, calibration_fraction
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
        # The range of normal values, so scoring can say when a value lies far outside it.
        schema = schema.with_ranges(frame)
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
        needed = min_calibration_size(quantile, self.threshold)
        if n_cal < needed:
            # Checked before training, which may take long, rather than after it.
            raise CalibrationError(
                f"{calibration_need(self.threshold, quantile)} calibration samples, got {n_cal} "
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

        seed_everything(self.random_state)  # weight initialisation is part of what the seed fixes
        module, module_config = build_module(self.model, preprocessor.n_outputs, self.get_params())
        objective = self._objective()
        X_fit = preprocessor.transform(fit_frame, impute=impute)
        X_val = preprocessor.transform(frame.iloc[val_rows], impute=impute) if n_val else None
        self.history_: TrainingHistory = train_autoencoder(
            module, objective, X_fit, X_val, self._training_config()
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
        self.thresholder_ = make_threshold(self.threshold, quantile).fit(cal_scores)
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
        topk = self.topk_fraction
        sources = source_matrix(
            self.preprocessor_.output_sources_, len(self.preprocessor_.input_names_)
        ).to(self.device_)

        def score(batch: torch.Tensor) -> torch.Tensor:
            errors = elementwise_error(module(batch).x_hat, batch, loss)
            if errors.dim() == 3:  # an ensemble: (n_members, n, d) -> mean over members
                errors = errors.mean(dim=0)
            scores = reduce_errors(errors, reduction, topk).unsqueeze(1)  # type: ignore[arg-type]
            return torch.cat([scores, errors @ sources], dim=1) if attribute else scores

        # float32 even where training used bf16: the threshold was calibrated on these numbers
        # and must mean the same on every device the model is later loaded on.
        out = infer_in_batches(
            score,
            module,
            X_encoded,
            # Large chunks (up to 64 Ki rows, 16 M values) keep per-call overhead small.
            max(self.batch_size, min(65_536, 2**24 // max(X_encoded.shape[1], 1))),
            self.device_,
            mixed_precision=False,
        )
        return out[:, 0].astype(np.float64), out[:, 1:]

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
            z = module(batch).z
            return z.permute(1, 0, 2).reshape(len(batch), -1) if z.dim() == 3 else z

        return infer_in_batches(
            codes,
            module,
            encoded,
            4096,
            self.device_,
            mixed_precision=False,
        )

    # ------------------------------------------------------------------ time series
    def _series_policy(self, features: Sequence[str], frequency: float | None) -> SeriesPolicy:
        return SeriesPolicy(
            time_column=self.time_column,
            series_column=self.series_column,
            features=tuple(features),
            duplicates=self.duplicate_policy,
            gaps=self.gap_policy,
            gap_fill=self.gap_fill,
            frequency=frequency,
            gap_tolerance=self.gap_tolerance,
        )

    def _series_schema(self, frame: pd.DataFrame) -> TableSchema:
        keys = [c for c in (self.series_column, self.time_column) if c is not None]
        keys += [k for k in self.key_columns if k not in keys]
        schema = TableSchema.infer(frame, self.feature_columns, None, keys)
        if schema.categorical_columns:
            raise SchemaError(
                f"series models take numeric features only; {schema.categorical_columns} are "
                "not numeric (pass them as key_columns, or encode them first)",
                column=schema.categorical_columns[0],
            )
        return schema

    def _layout(
        self,
        frame: pd.DataFrame,
        context: pd.DataFrame | None,
        source: str | None = None,
    ) -> SeriesLayout:
        """Points of ``frame`` (after the duplicate and gap policies) with ``context`` in front."""
        invalid = None
        if self.nan_policy == "reject":
            invalid = invalid_row_reasons(frame, self.schema_).to_numpy()
        layout = build_layout(
            frame,
            self.series_policy_,
            invalid=invalid,
            context=context,
            window=self.window,  # type: ignore[arg-type]
            source=source,
        )
        if self.nan_policy == "impute":
            layout.values = _fill_missing(layout.values, layout.series)
        decisions = {k: v for k, v in layout.counts.items() if v and k != "rows"}
        if decisions:
            logger.info("%s: series handling %s", source or "batch", decisions)
        return layout

    def _fit_series(
        self,
        frame: pd.DataFrame,
        quantile: float,
        validation_fraction: float,
        calibration_fraction: float,
    ) -> AutoencoderDetector:
        """:meth:`fit` for windows: each stretch of points is split in time order.

        The first part of every stretch trains, the next part drives early stopping and the last
        part calibrates. Splitting in time, not at random, keeps calibration points out of every
        training window (windows overlap), and calibrates on the most recent normal behaviour.
        """
        window = int(self.window)  # type: ignore[arg-type]
        schema = self._series_schema(frame).with_ranges(frame)
        frequency = self._frequency(frame, schema)
        self.schema_ = schema
        self.series_policy_ = self._series_policy(schema.feature_names, frequency)
        self.frequency_ = frequency
        layout = self._layout(frame, None, source="fit")
        bad = layout.reasons != ""
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            logger.warning(
                "fit: leaving out %d of %d rows (first: row %s, %s)",
                bad.sum(),
                len(frame),
                frame.index[first],
                layout.reasons[first],
            )
        fit_parts, val_parts, cal_parts = [], [], []
        for start, end in layout.segments:
            length = end - start
            n_cal = round(length * calibration_fraction)
            n_val = round(length * validation_fraction)
            fit_end = start + length - n_cal - n_val
            fit_parts.append((start, fit_end))
            val_parts.append((fit_end, fit_end + n_val))
            cal_parts.append((fit_end + n_val, end))
        n_cal_points = sum(e - s for s, e in cal_parts)
        needed = min_calibration_size(quantile, self.threshold)
        if n_cal_points < needed:
            raise CalibrationError(
                f"{calibration_need(self.threshold, quantile)} calibration points, got "
                f"{n_cal_points} ({calibration_fraction:g} of {len(layout.times)} points); lower "
                "the quantile or give a longer normal stretch"
            )
        fit_points = np.concatenate([np.arange(s, e) for s, e in fit_parts])
        scaler = SeriesScaler(self.scaler, per_series=self.series_scaling == "per_series")
        scaler.fit(layout.values[fit_points], layout.series[fit_points])
        scaled = np.nan_to_num(scaler.transform(layout.values, layout.series))

        def windows(parts: list[tuple[int, int]], stride: int, lead: int) -> np.ndarray:
            chunks = []
            for (s, e), (seg_start, _) in zip(parts, layout.segments, strict=True):
                first = max(seg_start, s - lead)  # lead-in points from before the part
                chunks.append(sliding_windows(scaled[first:e], window, stride))
            return np.concatenate(chunks) if chunks else np.zeros((0, window, scaled.shape[1]))

        X_fit = windows(fit_parts, self.stride, 0)
        # A validation window ends in the validation part; its first points may be training ones.
        X_val = windows(val_parts, 1, window - 1)
        if len(X_fit) < 2:
            raise ValueError(
                f"too few training windows: {len(X_fit)} of {window} points from "
                f"{len(fit_points)} training points; give a longer normal stretch or a smaller window"
            )
        seed_everything(self.random_state)
        module, module_config = build_module(self.model, scaled.shape[1], self.get_params())
        objective = self._objective()
        self.history_ = train_autoencoder(
            module,
            objective,
            np.ascontiguousarray(X_fit),
            np.ascontiguousarray(X_val) if len(X_val) else None,
            self._training_config(),
        )
        self.scaler_ = scaler
        self.preprocessor_ = None  # type: ignore[assignment]  # series use scaler_
        self.module_ = module
        self.module_config_ = module_config
        self.objective_ = objective
        self.device_ = resolve_device(self.device)
        self.n_features_in_ = len(schema.features)
        self.feature_names_in_ = np.asarray(schema.feature_names, dtype=object)

        # Calibration points are scored as a following batch would be: with the window - 1
        # points before them as context.
        cal_segments = [
            (max(seg[0], s - (window - 1)), e)
            for (s, e), seg in zip(cal_parts, layout.segments, strict=True)
        ]
        points = self._point_scores(scaled, cal_segments)
        cal_points = np.concatenate([np.arange(s, e) for s, e in cal_parts])
        cal_scores = points[cal_points, 0].astype(np.float64)
        cal_scores = cal_scores[np.isfinite(cal_scores)]
        if len(cal_scores) < needed:
            raise CalibrationError(
                f"{calibration_need(self.threshold, quantile)} calibration points, only "
                f"{len(cal_scores)} could be scored; give a longer normal stretch"
            )
        self.thresholder_ = make_threshold(self.threshold, quantile).fit(cal_scores)
        self.threshold_ = self.thresholder_.threshold_
        self.split_index_ = {
            "fit": fit_points,
            "validation": np.concatenate([np.arange(s, e) for s, e in val_parts]),
            "calibration": cal_points,
        }
        self.fit_info_ = {
            "n_rows": len(frame),
            "n_rejected": int(bad.sum()),
            "n_fit": len(fit_points),
            "n_validation": int(sum(e - s for s, e in val_parts)),
            "n_calibration": len(cal_scores),
            "n_fit_windows": len(X_fit),
            "quantile": quantile,
            **{f"series_{k}": v for k, v in layout.counts.items()},
        }
        return self

    def _frequency(self, frame: pd.DataFrame, schema: TableSchema) -> float | None:
        if self.time_column is None:
            return None
        if self.frequency is not None:
            if isinstance(self.frequency, int | float):
                return float(self.frequency)
            return float(pd.Timedelta(self.frequency).total_seconds())
        return infer_frequency(frame, self._series_policy(schema.feature_names, None))

    @torch.no_grad()
    def _point_scores(
        self, scaled: np.ndarray, segments: Sequence[tuple[int, int]], codes: bool = False
    ) -> np.ndarray:
        """Per point: the score and per-feature errors ``(n_points, 1 + n_features)`` (NaN where
        no window covers the point), or with ``codes`` the latent code of the window ending at it.

        Windows are cut on the device from each stretch (``Tensor.unfold``, a view) and scored
        in batches; each batch's errors are folded onto points before the next is cut.
        """
        module, window = self.module_, int(self.window)  # type: ignore[arg-type]
        module.eval()
        n_points, n_features = scaled.shape
        width = None
        out = None
        batch = max(self.batch_size, 1024)
        for start, end in segments:
            if end - start < window:
                continue
            stretch = to_device_tensor(scaled[start:end], self.device_)
            all_windows = stretch.unfold(0, window, 1).transpose(1, 2)  # (n_windows, window, f)
            fold = (
                None
                if codes
                else PointFold(
                    end - start,
                    window,
                    1 + n_features,
                    self.point_reduction,  # type: ignore[arg-type]
                    self.device_,
                )
            )
            parts = []
            for first in range(0, len(all_windows), batch):
                x = all_windows[first : first + batch].contiguous()
                rec = module(x)
                if codes:
                    z = rec.z
                    parts.append(z.permute(1, 0, 2).reshape(len(x), -1) if z.dim() == 3 else z)
                    continue
                errors = elementwise_error(rec.x_hat, x, self.objective_.loss)
                if errors.dim() == 4:  # an ensemble: (n_members, n, window, f)
                    errors = errors.mean(dim=0)
                # One score per time step from its features, as a table row's from its columns.
                step = reduce_last(errors, self.reduction, self.topk_fraction)  # type: ignore[arg-type]
                fold.add(torch.cat([step.unsqueeze(-1), errors], dim=-1), first)  # type: ignore[union-attr]
            if codes:
                z_all = torch.cat(parts).cpu().numpy()
                if out is None:
                    width = z_all.shape[1]
                    out = np.full((n_points, width), np.nan, dtype=np.float32)
                out[start + window - 1 : end] = z_all
            else:
                if out is None:
                    out = np.full((n_points, 1 + n_features), np.nan, dtype=np.float32)
                out[start:end] = fold.result().cpu().numpy()  # type: ignore[union-attr]
        if out is None:
            out = np.full((n_points, width or (1 + n_features)), np.nan, dtype=np.float32)
        return out

    def _series_rows(
        self,
        frame: pd.DataFrame,
        context: pd.DataFrame | None,
        source: str | None = None,
        codes: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, SeriesLayout]:
        """Per input row: the point values (NaN for rejected rows), the reasons, and the layout."""
        layout = self._layout(frame, context, source)
        scaled = np.nan_to_num(self.scaler_.transform(layout.values, layout.series))
        points = self._point_scores(scaled, layout.segments, codes=codes)
        rows = np.full((len(frame), points.shape[1]), np.nan, dtype=np.float32)
        mapped = layout.row_point >= 0
        rows[mapped] = points[layout.row_point[mapped]]
        return rows, layout.reasons, layout

    def _series_values(
        self, X: pd.DataFrame | np.ndarray, context: pd.DataFrame | None, codes: bool = False
    ) -> np.ndarray:
        frame = self._frame(X)
        self.schema_.validate(frame, require_keys=True)
        rows, reasons, _ = self._series_rows(frame, context, codes=codes)
        bad = reasons != ""
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InvalidRowsError(
                f"{int(bad.sum())} of {len(frame)} rows cannot be scored (first: row "
                f"{frame.index[first]}: {reasons[first]}); use anomaly.scoring.score_frame to "
                "set such rows aside with a reason"
            )
        return rows

    def next_context(self, X: pd.DataFrame, context: pd.DataFrame | None = None) -> pd.DataFrame:
        """The context a batch following ``X`` needs: the last ``window - 1`` points per series.

        A small table (series, time and feature columns) to keep beside the model, e.g. as a
        Parquet file, and to pass as ``context`` when scoring the next batch.
        """
        self._check_fitted()
        self._check_series()
        frame = self._frame(X)
        self.schema_.validate(frame, require_keys=True)
        layout = self._layout(frame, context)
        datetimes = self.time_column is not None and not pd.api.types.is_numeric_dtype(
            frame[self.time_column]
        )
        return context_frame(layout, self.series_policy_, int(self.window), datetimes)  # type: ignore[arg-type]

    def _check_series(self) -> None:
        if self.window is None:
            raise ValueError("context applies to time-series detectors (window set) only")

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


def _fill_missing(values: np.ndarray, series: np.ndarray) -> np.ndarray:
    """Forward- then back-fill non-finite values within each series (``nan_policy="impute"``)."""
    frame = pd.DataFrame(np.where(np.isfinite(values), values, np.nan))
    return frame.groupby(series, sort=False).transform(lambda c: c.ffill().bfill()).to_numpy()
