"""Time series: points of one or more series, scored through sliding windows and folded back.

Stretches of each series are split in time order (training, then early stopping, then
calibration); scoring a batch takes the last ``window - 1`` points of the batch before as context,
so a series scored batch by batch gets the scores it would get in one piece.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from anomaly.data.schema import TableSchema, invalid_row_reasons
from anomaly.data.series import (
    SeriesLayout,
    SeriesPolicy,
    build_layout,
    context_frame,
    infer_frequency,
)
from anomaly.data.windows import PointFold, sliding_windows
from anomaly.errors import CalibrationError, InvalidRowsError, SchemaError
from anomaly.kinds.base import DetectorBase, RowErrors
from anomaly.models import elementwise_error
from anomaly.models.build import build_module
from anomaly.preprocessing import SeriesScaler
from anomaly.reduction import reduce_last
from anomaly.thresholds import calibration_need, min_calibration_size
from anomaly.training import to_device_tensor

logger = logging.getLogger(__name__)


class SeriesKind(DetectorBase):
    """Fit and score windows of a series (``window`` set)."""

    scaler_: SeriesScaler
    series_policy_: SeriesPolicy
    frequency_: float | None

    def _series_policy(self, features: Sequence[str], frequency: float | None) -> SeriesPolicy:
        return SeriesPolicy(
            time_column=self.time_column,
            series_column=self.series_column,
            features=tuple(features),
            duplicates=self.duplicate_policy,
            gaps=self.gap_policy,
            gap_fill=self.gap_fill,
            frequency=frequency,
            gap_tolerance=self.gap_tolerance,
        )

    def _series_schema(self, frame: pd.DataFrame) -> TableSchema:
        keys = [c for c in (self.series_column, self.time_column) if c is not None]
        keys += [k for k in self.key_columns if k not in keys]
        schema = TableSchema.infer(frame, self.feature_columns, None, keys)
        if schema.categorical_columns:
            raise SchemaError(
                f"series models take numeric features only; {schema.categorical_columns} are "
                "not numeric (pass them as key_columns, or encode them first)",
                column=schema.categorical_columns[0],
            )
        return schema

    def _layout(
        self,
        frame: pd.DataFrame,
        context: pd.DataFrame | None,
        source: str | None = None,
    ) -> SeriesLayout:
        """Points of ``frame`` (after the duplicate and gap policies) with ``context`` in front."""
        invalid = None
        if self.nan_policy == "reject":
            invalid = invalid_row_reasons(frame, self.schema_).to_numpy()
        layout = build_layout(
            frame,
            self.series_policy_,
            invalid=invalid,
            context=context,
            window=self.window,  # type: ignore[arg-type]
            source=source,
        )
        if self.nan_policy == "impute":
            layout.values = _fill_missing(layout.values, layout.series)
        # Carrying context is the normal case, not a decision worth a line per batch.
        decisions = {
            k: v for k, v in layout.counts.items() if v and k not in ("rows", "context_points")
        }
        if decisions:
            logger.info("%s: series handling %s", source or "batch", decisions)
        return layout

    def _fit_series(
        self,
        frame: pd.DataFrame,
        quantile: float,
        validation_fraction: float,
        calibration_fraction: float,
    ) -> None:
        """:meth:`fit` for windows: each stretch of points is split in time order.

        The first part of every stretch trains, the next part drives early stopping and the last
        part calibrates. Splitting in time, not at random, keeps calibration points out of every
        training window (windows overlap), and calibrates on the most recent normal behaviour.
        """
        window = int(self.window)  # type: ignore[arg-type]
        schema = self._series_schema(frame).with_ranges(frame)
        frequency = self._frequency(frame, schema)
        self.schema_ = schema
        self.series_policy_ = self._series_policy(schema.feature_names, frequency)
        self.frequency_ = frequency
        layout = self._layout(frame, None, source="fit")
        bad = layout.reasons != ""
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            logger.warning(
                "fit: leaving out %d of %d rows (first: row %s, %s)",
                bad.sum(),
                len(frame),
                frame.index[first],
                layout.reasons[first],
            )
        fit_parts, val_parts, cal_parts = [], [], []
        for start, end in layout.segments:
            length = end - start
            n_cal = round(length * calibration_fraction)
            n_val = round(length * validation_fraction)
            fit_end = start + length - n_cal - n_val
            fit_parts.append((start, fit_end))
            val_parts.append((fit_end, fit_end + n_val))
            cal_parts.append((fit_end + n_val, end))
        n_cal_points = sum(e - s for s, e in cal_parts)
        needed = min_calibration_size(quantile, self.threshold)
        if n_cal_points < needed:
            raise CalibrationError(
                f"{calibration_need(self.threshold, quantile)} calibration points, got "
                f"{n_cal_points} ({calibration_fraction:g} of {len(layout.times)} points); lower "
                "the quantile or give a longer normal stretch"
            )
        fit_points = np.concatenate([np.arange(s, e) for s, e in fit_parts])
        scaler = SeriesScaler(self.scaler, per_series=self.series_scaling == "per_series")
        scaler.fit(layout.values[fit_points], layout.series[fit_points])
        scaled = np.nan_to_num(scaler.transform(layout.values, layout.series))

        def windows(parts: list[tuple[int, int]], stride: int, lead: int) -> np.ndarray:
            chunks = []
            for (s, e), (seg_start, _) in zip(parts, layout.segments, strict=True):
                first = max(seg_start, s - lead)  # lead-in points from before the part
                chunks.append(sliding_windows(scaled[first:e], window, stride))
            return np.concatenate(chunks) if chunks else np.zeros((0, window, scaled.shape[1]))

        X_fit = windows(fit_parts, self.stride, 0)
        # A validation window ends in the validation part; its first points may be training ones.
        X_val = windows(val_parts, 1, window - 1)
        if len(X_fit) < 2:
            raise ValueError(
                f"too few training windows: {len(X_fit)} of {window} points from "
                f"{len(fit_points)} training points; give a longer normal stretch or a smaller window"
            )
        self._train_network(
            lambda: build_module(self.model, scaled.shape[1], self.get_params()),
            self._objective(),
            np.ascontiguousarray(X_fit),
            np.ascontiguousarray(X_val) if len(X_val) else None,
        )
        self.scaler_ = scaler
        self.preprocessor_ = None  # type: ignore[assignment]  # series use scaler_
        self.n_features_in_ = len(schema.features)
        self.feature_names_in_ = np.asarray(schema.feature_names, dtype=object)

        # Calibration points are scored as a following batch would be: with the window - 1
        # points before them as context.
        cal_segments = [
            (max(seg[0], s - (window - 1)), e)
            for (s, e), seg in zip(cal_parts, layout.segments, strict=True)
        ]
        points = self._point_scores(scaled, cal_segments)
        cal_points = np.concatenate([np.arange(s, e) for s, e in cal_parts])
        cal_scores = points[cal_points, 0].astype(np.float64)
        cal_scores = cal_scores[np.isfinite(cal_scores)]
        if len(cal_scores) < needed:
            raise CalibrationError(
                f"{calibration_need(self.threshold, quantile)} calibration points, only "
                f"{len(cal_scores)} could be scored; give a longer normal stretch"
            )
        self._calibrate(cal_scores, quantile)
        self.split_index_ = {
            "fit": fit_points,
            "validation": np.concatenate([np.arange(s, e) for s, e in val_parts]),
            "calibration": cal_points,
        }
        self.fit_info_ = {
            "n_rows": len(frame),
            "n_rejected": int(bad.sum()),
            "n_fit": len(fit_points),
            "n_validation": int(sum(e - s for s, e in val_parts)),
            "n_calibration": len(cal_scores),
            "n_fit_windows": len(X_fit),
            "quantile": quantile,
            **{f"series_{k}": v for k, v in layout.counts.items()},
        }

    def _frequency(self, frame: pd.DataFrame, schema: TableSchema) -> float | None:
        if self.time_column is None:
            return None
        if self.frequency is not None:
            if isinstance(self.frequency, int | float):
                return float(self.frequency)
            return float(pd.Timedelta(self.frequency).total_seconds())
        return infer_frequency(frame, self._series_policy(schema.feature_names, None))

    @torch.no_grad()
    def _point_scores(
        self, scaled: np.ndarray, segments: Sequence[tuple[int, int]], codes: bool = False
    ) -> np.ndarray:
        """Per point: the score and per-feature errors ``(n_points, 1 + n_features)`` (NaN where
        no window covers the point), or with ``codes`` the latent code of the window ending at it.

        Windows are cut on the device from each stretch (``Tensor.unfold``, a view) and scored
        in batches; each batch's errors are folded onto points before the next is cut.
        """
        module, window = self.module_, int(self.window)  # type: ignore[arg-type]
        module.eval()
        n_points, n_features = scaled.shape
        width = None
        out = None
        batch = max(self.batch_size, 1024)
        for start, end in segments:
            if end - start < window:
                continue
            stretch = to_device_tensor(scaled[start:end], self.device_)
            all_windows = stretch.unfold(0, window, 1).transpose(1, 2)  # (n_windows, window, f)
            fold = (
                None
                if codes
                else PointFold(
                    end - start,
                    window,
                    1 + n_features,
                    self.point_reduction,  # type: ignore[arg-type]
                    self.device_,
                )
            )
            parts = []
            for first in range(0, len(all_windows), batch):
                x = all_windows[first : first + batch].contiguous()
                rec = module(x)
                if codes:
                    parts.append(self._member_codes(rec.z))
                    continue
                errors = self._member_mean(elementwise_error(rec.x_hat, x, self.objective_.loss))
                # One score per time step from its features, as a table row's from its columns.
                step = reduce_last(errors, self.reduction, self.topk_fraction)  # type: ignore[arg-type]
                fold.add(torch.cat([step.unsqueeze(-1), errors], dim=-1), first)  # type: ignore[union-attr]
            if codes:
                z_all = torch.cat(parts).cpu().numpy()
                if out is None:
                    width = z_all.shape[1]
                    out = np.full((n_points, width), np.nan, dtype=np.float32)
                out[start + window - 1 : end] = z_all
            else:
                if out is None:
                    out = np.full((n_points, 1 + n_features), np.nan, dtype=np.float32)
                out[start:end] = fold.result().cpu().numpy()  # type: ignore[union-attr]
        if out is None:
            out = np.full((n_points, width or (1 + n_features)), np.nan, dtype=np.float32)
        return out

    def _series_rows(
        self,
        frame: pd.DataFrame,
        context: pd.DataFrame | None,
        source: str | None = None,
        codes: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, SeriesLayout]:
        """Per input row: the point values (NaN for rejected rows), the reasons, and the layout."""
        layout = self._layout(frame, context, source)
        scaled = np.nan_to_num(self.scaler_.transform(layout.values, layout.series))
        points = self._point_scores(scaled, layout.segments, codes=codes)
        rows = np.full((len(frame), points.shape[1]), np.nan, dtype=np.float32)
        mapped = layout.row_point >= 0
        rows[mapped] = points[layout.row_point[mapped]]
        return rows, layout.reasons, layout

    def _series_row_errors(
        self, frame: pd.DataFrame, context: pd.DataFrame | None, source: str | None = None
    ) -> RowErrors:
        """Errors of the rows of ``frame`` whose points could be scored, with the layout counts."""
        values, reasons, layout = self._series_rows(frame, context, source)
        ok = np.asarray(reasons == "", dtype=bool)
        return RowErrors(
            ok=ok,
            scores=values[ok, 0].astype(np.float64),
            per_feature=values[ok, 1:],
            reasons=np.asarray(reasons, dtype=object)[~ok],
            feature_names=tuple(self.schema_.feature_names),
            counts=layout.counts,
            point_errors=True,
        )

    def _series_values(
        self, X: pd.DataFrame | np.ndarray, context: pd.DataFrame | None, codes: bool = False
    ) -> np.ndarray:
        frame = self._frame(X)
        self.schema_.validate(frame, require_keys=True)
        rows, reasons, _ = self._series_rows(frame, context, codes=codes)
        bad = reasons != ""
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InvalidRowsError(
                f"{int(bad.sum())} of {len(frame)} rows cannot be scored (first: row "
                f"{frame.index[first]}: {reasons[first]}); use anomaly.scoring.score_frame to "
                "set such rows aside with a reason"
            )
        return rows

    def next_context(self, X: pd.DataFrame, context: pd.DataFrame | None = None) -> pd.DataFrame:
        """The context a batch following ``X`` needs: the last ``window - 1`` points per series.

        A small table (series, time and feature columns) to keep beside the model, e.g. as a
        Parquet file, and to pass as ``context`` when scoring the next batch.
        """
        self._check_fitted()
        self._check_series()
        frame = self._frame(X)
        self.schema_.validate(frame, require_keys=True)
        return self.context_after(frame, context)[0]

    def context_after(
        self, frame: pd.DataFrame, context: pd.DataFrame | None = None, source: str | None = None
    ) -> tuple[pd.DataFrame, SeriesLayout]:
        """:meth:`next_context` of a frame already checked against the schema, with the layout
        of its points (whose counts say what the duplicate and gap policies did to it)."""
        layout = self._layout(frame, context, source)
        datetimes = self.time_column is not None and not pd.api.types.is_numeric_dtype(
            frame[self.time_column]
        )
        window = int(self.window)  # type: ignore[arg-type]
        return context_frame(layout, self.series_policy_, window, datetimes), layout

    def _check_series(self) -> None:
        if self.window is None:
            raise ValueError("context applies to time-series detectors (window set) only")


def _fill_missing(values: np.ndarray, series: np.ndarray) -> np.ndarray:
    """Forward- then back-fill non-finite values within each series (``nan_policy="impute"``)."""
    frame = pd.DataFrame(np.where(np.isfinite(values), values, np.nan))
    return frame.groupby(series, sort=False).transform(lambda c: c.ffill().bfill()).to_numpy()
