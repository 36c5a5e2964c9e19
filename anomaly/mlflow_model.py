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
    """Scores a DataFrame: one output row per input row, aligned with it.

    For an image model the DataFrame holds encoded image bytes in the detector's ``image_column``.
    """

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

        frame = pd.DataFrame(model_input)
        if getattr(self.detector, "image_shape_", None) is not None:
            return self._score_images(frame)
        return score_rows(self.detector, frame).reset_index(drop=True)

    def _score_images(self, frame: pd.DataFrame) -> pd.DataFrame:
        import numpy as np

        from anomaly.data.images import read_image_frame

        det = self.detector
        channels, height, width = det.image_shape_
        batch = read_image_frame(frame, det.image_column, [], (height, width), channels)
        out = pd.DataFrame(index=range(len(frame)))
        out["anomaly_score"] = np.nan
        out["p_value"] = np.nan
        out["is_anomaly"] = False
        out["reject_reason"] = ""
        ok = batch.index["source_row"].to_numpy()
        scores = det.score_samples(batch.images)
        out.loc[ok, "anomaly_score"] = scores
        out.loc[ok, "p_value"] = det.thresholder_.p_values(scores)
        out.loc[ok, "is_anomaly"] = det.thresholder_.predict(scores)
        out.loc[batch.rejected["source_row"].to_numpy(), "reject_reason"] = batch.rejected[
            "reason"
        ].to_numpy()
        return out


mlflow.models.set_model(AnomalyDetectorModel())
