"""Autoencoder anomaly detection with calibrated thresholds.

>>> from anomaly import AutoencoderDetector
>>> det = AutoencoderDetector(model="dense").fit(X_normal)  # doctest: +SKIP
>>> det.predict(X_new)  # doctest: +SKIP
"""

import os as _os

# MLflow's usage telemetry is off in every process of the project unless the user turns it on
# (the quick start must work offline; values already set win).
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

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
