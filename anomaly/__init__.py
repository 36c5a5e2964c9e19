"""Autoencoder anomaly detection with calibrated thresholds.

>>> from anomaly import AutoencoderDetector
>>> det = AutoencoderDetector(model="dense").fit(X_normal)  # doctest: +SKIP
>>> det.predict(X_new)  # doctest: +SKIP
"""

from anomaly.detectors import AutoencoderDetector
from anomaly.errors import (
    AnomalyError,
    CalibrationError,
    DataFileError,
    InvalidRowsError,
    ModelFileError,
    ModelNotFoundError,
    NotFittedError,
    SchemaError,
)
from anomaly.scoring import ScoredBatch, score_frame
from anomaly.thresholds import QuantileThreshold

__version__ = "0.1.0"

__all__ = [
    "AnomalyError",
    "AutoencoderDetector",
    "CalibrationError",
    "DataFileError",
    "InvalidRowsError",
    "ModelFileError",
    "ModelNotFoundError",
    "NotFittedError",
    "QuantileThreshold",
    "SchemaError",
    "ScoredBatch",
    "__version__",
    "score_frame",
]
