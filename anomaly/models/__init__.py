"""Pure torch autoencoders: tensors in, tensors out; nothing here knows about files or MLflow."""

from anomaly.models.dense import (
    AutoencoderEnsemble,
    DenseAutoencoder,
    DenseConfig,
    default_dense_layout,
)
from anomaly.models.losses import LossName, Objective, elementwise_error
from anomaly.models.noise import NoiseName, corrupt
from anomaly.models.outputs import Reconstruction

__all__ = [
    "AutoencoderEnsemble",
    "DenseAutoencoder",
    "DenseConfig",
    "LossName",
    "NoiseName",
    "Objective",
    "Reconstruction",
    "corrupt",
    "default_dense_layout",
    "elementwise_error",
]
