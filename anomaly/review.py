"""Threshold review for people: what a registered version's threshold means and how it has done.

``anomaly threshold show MODEL_URI`` prints this report; it reads the version and its model
files through the registry and the last scoring runs of that version from the tracking store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from mlflow.tracking import MlflowClient

from anomaly.monitoring import QUANTILE_LEVELS
from anomaly.tracking import TrackingConfig, configure, load_registered_detector


@dataclass(frozen=True)
class BatchRate:
    """One scoring run of the version: when, how many rows, and the share flagged."""

    run_name: str
    started: str
    rows_scored: int
    anomaly_rate: float


@dataclass(frozen=True)
class ThresholdReport:
    """A registered version's threshold, its calibration and the last batches' flagged rates."""

    model_uri: str
    kind: str  # "quantile", "pot" or "fixed"
    threshold: float
    # The quantile of calibration errors the threshold stands at (for a fixed value: its
    # conformal coverage), and 1 - quantile, the share of normal rows to expect above it.
    quantile: float
    calibration_size: int
    expected_rate: float
    # The smallest share of normal rows a quantile threshold on n calibration rows can promise,
    # 1/(n+1): below it the conformal order statistic is conservative.
    resolution: float
    calibration_quantiles: tuple[tuple[float, float], ...]
    recent: tuple[BatchRate, ...]


def threshold_report(model_uri: str, tracking: TrackingConfig, last: int = 10) -> ThresholdReport:
    """Report on ``model_uri``'s threshold and its ``last`` scoring runs, newest first."""
    model = load_registered_detector(model_uri, tracking, device="cpu")
    thr = model.detector.thresholder_
    calibration = np.asarray(thr.calibration_scores_, dtype=np.float64)
    q = float(thr.q)
    kind = {"PotThreshold": "pot", "FixedThreshold": "fixed"}.get(type(thr).__name__, "quantile")
    levels = tuple((lv, float(np.quantile(calibration, lv))) for lv in QUANTILE_LEVELS)
    experiment_id = configure(tracking)
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`anomaly.model` = '{model.name}/{model.version}' "
            "and tags.`anomaly.run_type` = 'scoring'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=last,
    )
    recent = tuple(
        BatchRate(
            run_name=r.info.run_name or r.info.run_id,
            started=_stamp(r.info.start_time),
            rows_scored=int(r.data.metrics.get("rows_scored", 0)),
            anomaly_rate=float(r.data.metrics.get("anomaly_rate", math.nan)),
        )
        for r in runs
    )
    return ThresholdReport(
        model_uri=model.model_uri,
        kind=kind,
        threshold=float(model.detector.threshold_),
        quantile=q,
        calibration_size=len(calibration),
        expected_rate=1.0 - q,
        resolution=1.0 / (len(calibration) + 1),
        calibration_quantiles=levels,
        recent=recent,
    )


def _stamp(millis: int | None) -> str:
    if millis is None:
        return ""
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
