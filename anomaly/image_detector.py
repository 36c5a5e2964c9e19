"""The image half of :class:`~anomaly.detectors.AutoencoderDetector` (``model="conv"``).

Kept apart from the tabular code path: the detector dispatches here at the top of its fit and
score methods when its model is an image model. Images have no table schema and no scikit-learn
preprocessor; they arrive scaled to [0, 1] (:func:`anomaly.data.images.as_image_array`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from anomaly.data.images import MODES, as_image_array
from anomaly.errors import CalibrationError
from anomaly.models import (
    IMAGE_MODELS,
    ConvAutoencoder,
    ConvConfig,
    Objective,
    elementwise_error,
)
from anomaly.reduction import reduce_errors
from anomaly.thresholds import (
    QuantileThreshold,
    calibration_need,
    make_threshold,
    min_calibration_size,
)
from anomaly.training import (
    TrainingConfig,
    infer_in_batches,
    resolve_device,
    seed_everything,
    train_autoencoder,
)

logger = logging.getLogger(__name__)

DEFAULT_CONV_CHANNELS = (32, 64)
DEFAULT_CONV_LATENT = 32


def build_image_module(params: dict[str, Any], image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """JSON-able config of the image network for ``params`` and images ``(C, H, W)``."""
    channels, height, width = image_shape
    config = ConvConfig(
        image_size=(height, width),
        channels=channels,
        conv_channels=tuple(params["conv_channels"] or DEFAULT_CONV_CHANNELS),
        latent_dim=params["latent_dim"] or DEFAULT_CONV_LATENT,
        batch_norm=params["batch_norm"],
        variational=params["variational"],
        # Images are in [0, 1]; a sigmoid output keeps reconstructions there for every loss.
        output_activation="sigmoid",
    )
    return {**asdict(config), "n_members": params["n_estimators"]}


def image_module_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild the image network (or an ensemble of them) from :func:`build_image_module`'s config."""
    from anomaly.models import AutoencoderEnsemble

    options = {k: v for k, v in config.items() if k != "n_members"}
    conv = ConvConfig(
        **{
            **options,
            "image_size": tuple(options["image_size"]),
            "conv_channels": tuple(options["conv_channels"]),
        }
    )
    n_members = config.get("n_members", 1)
    if n_members == 1:
        return ConvAutoencoder(conv)
    return AutoencoderEnsemble([ConvAutoencoder(conv) for _ in range(n_members)])


class ImageDetectorMixin:
    """Fit, score, error maps and reconstructions for image models."""

    # Hyperparameters and fitted state shared with AutoencoderDetector (declared for mypy).
    model: str
    image_size: Any
    channels: int
    loss: str
    ssim_weight: float
    reduction: str
    topk_fraction: float
    batch_size: int
    random_state: int
    threshold: str
    module_: nn.Module
    objective_: Objective
    device_: torch.device
    thresholder_: QuantileThreshold
    image_shape_: tuple[int, int, int]

    def _validate_image_params(self) -> None:
        if self.channels not in MODES:
            raise ValueError(f"channels must be one of {sorted(MODES)}, got {self.channels}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ValueError(f"image_size must be (height, width), got {self.image_size}")
        if not 0 <= self.ssim_weight <= 1:
            raise ValueError(f"ssim_weight must be in [0, 1], got {self.ssim_weight}")
        if not 0 < self.topk_fraction <= 1:
            raise ValueError(f"topk_fraction must be in (0, 1], got {self.topk_fraction}")

    def _fit_images(
        self,
        X: np.ndarray,
        quantile: float,
        validation_fraction: float,
        calibration_fraction: float,
    ) -> Any:
        images = as_image_array(X, self.channels, self.image_size)
        n = len(images)
        rng = np.random.default_rng(self.random_state)
        order = rng.permutation(n)
        n_cal = round(n * calibration_fraction)
        n_val = round(n * validation_fraction)
        cal, val, fit = order[:n_cal], order[n_cal : n_cal + n_val], order[n_cal + n_val :]
        needed = min_calibration_size(quantile, self.threshold)
        if n_cal < needed:
            raise CalibrationError(
                f"{calibration_need(self.threshold, quantile)} calibration images, got {n_cal} "
                f"({calibration_fraction:g} of {n}); lower the quantile or give more normal images"
            )
        if len(fit) < 2:
            raise ValueError(f"too few normal images to train: {n} in all, {len(fit)} to fit")

        params: dict[str, Any] = self.get_params()  # type: ignore[attr-defined]
        shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))
        seed_everything(self.random_state)
        module_config = build_image_module(params, shape)
        module = image_module_from_config(module_config)
        objective = Objective(
            loss=params["loss"],
            noise=params["noise"],
            noise_factor=params["noise_factor"],
            sparsity_weight=params["sparsity_weight"],
            sparsity_target=params["sparsity_target"],
            kl_weight=params["kl_weight"],
            ssim_weight=params["ssim_weight"],
        )
        training = TrainingConfig(
            epochs=params["epochs"],
            batch_size=params["batch_size"],
            learning_rate=params["learning_rate"],
            weight_decay=params["weight_decay"],
            patience=params["patience"],
            device=params["device"],
            mixed_precision=params["mixed_precision"],
            seed=self.random_state,
            progress=params["verbose"],
        )
        history = train_autoencoder(
            module, objective, images[fit], images[val] if n_val else None, training
        )
        fitted: dict[str, Any] = {
            "history_": history,
            "schema_": None,
            "preprocessor_": None,
            "module_": module,
            "module_config_": module_config,
            "objective_": objective,
            "device_": resolve_device(params["device"]),
            "image_shape_": shape,
            "n_features_in_": int(np.prod(shape)),
        }
        for name, value in fitted.items():
            setattr(self, name, value)
        self.thresholder_ = make_threshold(self.threshold, quantile).fit(
            self._image_scores(images[cal])
        )
        self.threshold_ = self.thresholder_.threshold_
        self.split_index_ = {
            "fit": pd.Index(fit),
            "validation": pd.Index(val),
            "calibration": pd.Index(cal),
        }
        self.fit_info_ = {
            "n_rows": n,
            "n_rejected": 0,
            "n_fit": len(fit),
            "n_validation": len(val),
            "n_calibration": len(cal),
            "quantile": quantile,
        }
        return self

    def _as_images(self, X: np.ndarray) -> np.ndarray:
        channels, height, width = self.image_shape_
        return as_image_array(X, channels, (height, width))

    def _image_pass(self, images: np.ndarray, what: str) -> np.ndarray:
        """Run the network over images in batches; ``what`` is "scores", "maps" or "reconstructions"."""
        module, loss, weight = self.module_, self.objective_.loss, self.objective_.ssim_weight
        reduction, topk = self.reduction, self.topk_fraction

        def fn(batch: torch.Tensor) -> torch.Tensor:
            x_hat = module(batch).x_hat
            if what == "reconstructions":
                return x_hat.mean(dim=0) if x_hat.dim() == 5 else x_hat
            errors = elementwise_error(x_hat, batch, loss, weight)
            if errors.dim() == 5:  # an ensemble: average the members' errors
                errors = errors.mean(dim=0)
            pixels = errors.mean(dim=1)  # (n, H, W): channels averaged
            if what == "maps":
                return pixels
            return reduce_errors(pixels, reduction, topk).unsqueeze(1)  # type: ignore[arg-type]

        # float32 on every device, as for tables: the threshold was calibrated on these numbers.
        return infer_in_batches(
            fn, module, images, max(self.batch_size, 256), self.device_, mixed_precision=False
        )

    def _image_scores(self, images: np.ndarray) -> np.ndarray:
        return self._image_pass(images, "scores")[:, 0].astype(np.float64)

    def error_maps(self, X: np.ndarray) -> np.ndarray:
        """Per-pixel reconstruction error ``(n_images, height, width)`` (channels averaged).

        The image score is this map reduced by ``reduction`` (``topk``: mean of the largest
        ``topk_fraction`` of pixels). Only for image models.
        """
        self._check_image_model("error_maps")
        return self._image_pass(self._as_images(X), "maps")

    def reconstruct(self, X: np.ndarray) -> np.ndarray:
        """Reconstructions ``(n_images, channels, height, width)`` in [0, 1]. Only for image models."""
        self._check_image_model("reconstruct")
        return self._image_pass(self._as_images(X), "reconstructions")

    def _check_image_model(self, method: str) -> None:
        self._check_fitted()  # type: ignore[attr-defined]
        if self.model not in IMAGE_MODELS:
            raise TypeError(f"{method} needs an image model {IMAGE_MODELS}, this is {self.model!r}")
