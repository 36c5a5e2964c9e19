"""Tables: one row is one input; rows are split at random; a scikit-learn preprocessor encodes them."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from anomaly.data.schema import TableSchema, invalid_row_reasons, invalid_rows
from anomaly.errors import InvalidRowsError
from anomaly.kinds.base import DetectorBase, RowErrors, random_split
from anomaly.models import elementwise_error
from anomaly.models.build import build_module
from anomaly.preprocessing import TabularPreprocessor
from anomaly.reduction import reduce_errors, source_matrix
from anomaly.training import infer_in_batches

logger = logging.getLogger(__name__)


class TabularKind(DetectorBase):
    """Fit and score rows of a table (``model="dense"`` without a window)."""

    def _fit_table(
        self,
        frame: pd.DataFrame,
        quantile: float,
        validation_fraction: float,
        calibration_fraction: float,
    ) -> None:
        schema = TableSchema.infer(
            frame, self.feature_columns, self.categorical_columns, self.key_columns
        )
        # Reasons only for the bad rows: a clean table costs one pass over its features.
        bad, reasons = invalid_rows(frame, schema)
        if bad.any() and self.nan_policy == "reject":
            logger.warning(
                "fit: leaving out %d of %d rows with missing or non-finite features (first: row %s, %s)",
                bad.sum(),
                len(frame),
                frame.index[bad][0],
                reasons[0],
            )
            frame = frame.loc[~bad]
        # Rows of (the possibly filtered) frame whose features are all finite; only the impute
        # policy leaves any others in.
        valid = np.ones(len(frame), dtype=bool) if self.nan_policy == "reject" else ~bad
        # The range of normal values, so scoring can say when a value lies far outside it.
        schema = schema.with_ranges(frame)
        n = len(frame)
        cal_rows, val_rows, fit_rows = random_split(
            n, calibration_fraction, validation_fraction, self.random_state
        )
        self._check_calibration_size(
            len(cal_rows),
            quantile,
            "samples",
            f"({calibration_fraction:g} of {n} usable rows); lower the quantile or give more "
            "normal data (or a larger calibration_fraction)",
        )
        if len(fit_rows) < 2:
            raise ValueError(
                f"too few normal rows to train: {n} usable rows, {len(fit_rows)} left for fitting"
            )
        impute = self.nan_policy == "impute"
        fit_frame = frame.iloc[fit_rows]
        preprocessor = TabularPreprocessor(schema, scaler=self.scaler)  # type: ignore[arg-type]
        if impute:
            # Fitted on the complete rows only; the others are encoded with the fitted medians.
            preprocessor.fit(fit_frame.loc[valid[fit_rows]])
            X_fit = preprocessor.transform(fit_frame, impute=True)
        else:
            # Every row left is complete: the fit's own encoding of them is the training data.
            X_fit = preprocessor.fit_transform(fit_frame)
        self._train_network(
            lambda: build_module(self.model, preprocessor.n_outputs, self.get_params()),
            self._objective(),
            X_fit,
            preprocessor.transform(frame.iloc[val_rows], impute=impute) if len(val_rows) else None,
        )
        self.schema_ = schema
        self.preprocessor_ = preprocessor
        self.n_features_in_ = len(schema.features)
        self.feature_names_in_ = np.asarray(schema.feature_names, dtype=object)

        cal_scores, _ = self._score_encoded(
            preprocessor.transform(frame.iloc[cal_rows], impute=impute)
        )
        self._calibrate(cal_scores, quantile)
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

    def _table_row_errors(self, frame: pd.DataFrame) -> RowErrors:
        """Errors of the rows of ``frame`` (checked against the schema) that can be scored.

        With ``nan_policy="impute"`` every row is scored (non-finite values take the fit median);
        with ``"reject"`` rows with a missing or non-finite feature are set aside with a reason.
        """
        if self.nan_policy == "impute":
            ok = np.ones(len(frame), dtype=bool)
            reasons = np.array([], dtype=object)
            encoded = self.preprocessor_.transform(frame, impute=True)
        else:
            bad, reasons = invalid_rows(frame, self.schema_)
            ok = ~bad
            encoded = self.preprocessor_.transform(frame if ok.all() else frame[ok])
        scores, per_feature = self._score_encoded(encoded, attribute=True)
        return RowErrors(
            ok=ok,
            scores=scores,
            per_feature=per_feature,
            reasons=reasons,
            feature_names=tuple(self.preprocessor_.input_names_),
        )

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
            errors = self._member_mean(elementwise_error(module(batch).x_hat, batch, loss))
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
