"""Pure torch autoencoders: tensors in, tensors out; nothing here knows about files or MLflow."""

from anomaly.models.conv import ConvAutoencoder, ConvConfig
from anomaly.models.dense import (
    AutoencoderEnsemble,
    DenseAutoencoder,
    DenseConfig,
    default_dense_layout,
    default_sequence_latent,
)
from anomaly.models.ensemble import BatchedDenseEnsemble, ensemble_of
from anomaly.models.losses import LossName, Objective, elementwise_error
from anomaly.models.noise import NoiseName, corrupt
from anomaly.models.outputs import Reconstruction
from anomaly.models.ssim import ssim, ssim_map

# Network families that take images (n, C, H, W); every other family takes rows or windows.
IMAGE_MODELS: tuple[str, ...] = ("conv",)


def data_kind(model: str, window: int | None) -> str:
    """``"images"``, ``"series"`` or ``"tabular"``: what a detector of this family scores."""
    if model in IMAGE_MODELS:
        return "images"
    return "series" if window is not None else "tabular"


__all__ = [
    "IMAGE_MODELS",
    "AutoencoderEnsemble",
    "BatchedDenseEnsemble",
    "ConvAutoencoder",
    "ConvConfig",
    "DenseAutoencoder",
    "DenseConfig",
    "LossName",
    "NoiseName",
    "Objective",
    "Reconstruction",
    "corrupt",
    "data_kind",
    "default_dense_layout",
    "default_sequence_latent",
    "elementwise_error",
    "ensemble_of",
    "ssim",
    "ssim_map",
]
