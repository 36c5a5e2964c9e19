"""MLflow pyfunc entry point, logged as "model from code" so no Python object is pickled.

MLflow imports this file when the model is loaded with ``mlflow.pyfunc.load_model``: loading a
pyfunc model runs code from the artifact, so load models only from a registry you trust. The
detector itself is read with :meth:`AutoencoderDetector.load` (JSON, safetensors, skops).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class AnomalyDetectorModel(PythonModel):
    """Scores a DataFrame: one output row per input row, aligned with it."""

    def load_context(self, context: PythonModelContext) -> None:
        from anomaly.detectors import AutoencoderDetector

        self.detector = AutoencoderDetector.load(context.artifacts["detector"])

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        from anomaly.scoring import score_rows

        return score_rows(self.detector, pd.DataFrame(model_input)).reset_index(drop=True)


mlflow.models.set_model(AnomalyDetectorModel())
