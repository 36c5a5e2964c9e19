"""Autoencoder anomaly detection with calibrated thresholds.

>>> from anomaly import AutoencoderDetector
>>> det = AutoencoderDetector(model="dense").fit(X_normal)  # doctest: +SKIP
>>> det.predict(X_new)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib as _importlib
import os as _os
from typing import TYPE_CHECKING, Any

# MLflow's usage telemetry is off in every process of the project unless the user turns it on
# (the quick start must work offline; values already set win).
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

if TYPE_CHECKING:
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

# Public names and the module each lives in. They are imported on first use, not here: the
# detector pulls in torch and scikit-learn (seconds), which `anomaly score --help`, `log-run`
# or a flow that only reads files should not pay for.
_LAZY = {
    "AutoencoderDetector": "anomaly.detectors",
    "AnomalyError": "anomaly.errors",
    "CalibrationError": "anomaly.errors",
    "DataFileError": "anomaly.errors",
    "InvalidRowsError": "anomaly.errors",
    "ModelFileError": "anomaly.errors",
    "ModelNotFoundError": "anomaly.errors",
    "NotFittedError": "anomaly.errors",
    "SchemaError": "anomaly.errors",
    "ScoredBatch": "anomaly.scoring",
    "score_frame": "anomaly.scoring",
    "QuantileThreshold": "anomaly.thresholds",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'anomaly' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
