"""Images (``model="conv"``): arrays ``(n, C, H, W)`` in [0, 1] or encoded image bytes.

Images have no table schema and no scikit-learn preprocessor; they arrive scaled to [0, 1]
(:func:`anomaly.data.images.as_image_array`), are split at random, and fold pixel errors into one
score per image with the same reductions as a table's columns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
import torch

from anomaly.data.images import MODES, as_image_array
from anomaly.kinds.base import DetectorBase, random_split
from anomaly.models import IMAGE_MODELS, elementwise_error
from anomaly.models.build import build_image_module, image_module_from_config
from anomaly.reduction import reduce_errors
from anomaly.training import infer_in_batches


class ImageKind(DetectorBase):
    """Fit, score, error maps and reconstructions for image models."""

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
    ) -> None:
        images = as_image_array(X, self.channels, self.image_size)
        n = len(images)
        cal, val, fit = random_split(
            n, calibration_fraction, validation_fraction, self.random_state
        )
        self._check_calibration_size(
            len(cal),
            quantile,
            "images",
            f"({calibration_fraction:g} of {n}); lower the quantile or give more normal images",
        )
        if len(fit) < 2:
            raise ValueError(f"too few normal images to train: {n} in all, {len(fit)} to fit")

        shape = (int(images.shape[1]), int(images.shape[2]), int(images.shape[3]))

        def build() -> tuple[torch.nn.Module, dict[str, Any]]:
            config = build_image_module(self.get_params(), shape)
            return image_module_from_config(config), config

        self._train_network(
            build,
            dataclasses.replace(self._objective(), ssim_weight=self.ssim_weight),
            images[fit],
            images[val] if len(val) else None,
        )
        self.schema_ = None  # type: ignore[assignment]  # images have no table schema
        self.preprocessor_ = None  # type: ignore[assignment]
        self.image_shape_ = shape
        self.n_features_in_ = int(np.prod(shape))
        self._calibrate(self._image_scores(images[cal]), quantile)
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
                return self._member_mean(x_hat)
            errors = self._member_mean(elementwise_error(x_hat, batch, loss, weight))
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
        self._check_fitted()
        if self.model not in IMAGE_MODELS:
            raise TypeError(f"{method} needs an image model {IMAGE_MODELS}, this is {self.model!r}")
