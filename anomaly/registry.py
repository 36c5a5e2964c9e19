"""Registry operations: the promotion gate on a hold-out slice, and reviewer threshold changes."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pandas as pd

from anomaly.data.images import ImageBatch
from anomaly.detectors import AutoencoderDetector
from anomaly.errors import SchemaError
from anomaly.monitoring import GateResult, GateSettings, promotion_gate
from anomaly.scoring import score_frame
from anomaly.thresholds import FixedThreshold, PotThreshold, QuantileThreshold, make_threshold
from anomaly.tracking import (
    RegisteredModel,
    TrackingConfig,
    load_registered_detector,
    promote,
    register_threshold_change,
)

logger = logging.getLogger(__name__)


def split_holdout(
    frame: pd.DataFrame | ImageBatch, fraction: float, seed: int = 0, contiguous: bool = False
) -> tuple[pd.DataFrame | ImageBatch, pd.DataFrame | ImageBatch]:
    """Split normal rows into (rows to fit on, hold-out rows the model never sees).

    Rows are drawn at random; for time series (``contiguous``) the last ``fraction`` of the
    rows is held out instead, so both parts stay unbroken series.
    """
    if isinstance(frame, ImageBatch):  # images: a random share of the decoded images
        order = np.random.default_rng(seed).permutation(len(frame.images))
        n_holdout = round(len(order) * max(fraction, 0.0))
        return (
            frame.subset(np.sort(order[n_holdout:]), keep_rejected=True),
            frame.subset(np.sort(order[:n_holdout])),
        )
    if fraction <= 0:
        return frame, frame.iloc[:0]
    if contiguous:
        cut = len(frame) - round(len(frame) * fraction)
        return frame.iloc[:cut], frame.iloc[cut:]
    holdout = frame.sample(frac=fraction, random_state=seed)
    return frame.drop(index=holdout.index), holdout


def evaluate_gate(
    detector: AutoencoderDetector,
    holdout: pd.DataFrame | ImageBatch,
    settings: GateSettings | None = None,
    labelled: pd.DataFrame | None = None,
) -> GateResult:
    """Score the hold-out normal rows (and labelled rows, if any) and apply the promotion gate.

    Rows that cannot be scored (NaN/inf) are left out, as they are when scoring.
    """
    settings = settings or GateSettings()
    if isinstance(holdout, ImageBatch):
        if labelled is not None:
            raise ValueError("labelled gate data is not supported for image models yet")
        holdout_scores = detector.score_samples(holdout.images)
    else:
        holdout_scores = score_frame(detector, holdout).scored["anomaly_score"].to_numpy()
    labelled_scores = labels = None
    if labelled is not None:
        if settings.label_column not in labelled.columns:
            raise SchemaError(
                f"labelled validation data has no label column '{settings.label_column}' "
                f"(columns: {list(labelled.columns)[:20]})",
                column=settings.label_column,
            )
        batch = score_frame(detector, labelled.drop(columns=[settings.label_column]))
        labelled_scores = batch.scored["anomaly_score"].to_numpy()
        labels = labelled[settings.label_column].to_numpy()[batch.scored["source_row"].to_numpy()]
    return promotion_gate(
        holdout_scores,
        detector.threshold_,
        detector.thresholder_.q,
        settings,
        labelled_scores,
        labels,
    )


def gate_and_promote(
    model: RegisteredModel,
    detector: AutoencoderDetector,
    holdout: pd.DataFrame,
    tracking: TrackingConfig,
    settings: GateSettings | None = None,
    labelled: pd.DataFrame | None = None,
) -> GateResult:
    """Run the gate for a registered version and set ``champion`` on it only if it passes."""
    result = evaluate_gate(detector, holdout, settings, labelled)
    promote(model, result, tracking)
    return result


def change_threshold(
    model_uri: str,
    tracking: TrackingConfig,
    reason: str,
    quantile: float | None = None,
    value: float | None = None,
    changed_by: str | None = None,
    alias: str | None = None,
) -> tuple[RegisteredModel, float, float]:
    """Recompute a registered model's threshold from its stored calibration errors, register it anew.

    Give exactly one of ``quantile`` (conformal quantile of the calibration errors) or ``value``.
    Returns the new version and the old and new thresholds; the source version is untouched.
    """
    if (quantile is None) == (value is None):
        raise ValueError("give exactly one of quantile or value")
    if not reason.strip():
        raise ValueError("give a reason for the threshold change; it is recorded for audit")
    source = load_registered_detector(model_uri, tracking, device="cpu")
    calibration = source.detector.thresholder_.calibration_scores_
    # A tail-fitted model stays tail-fitted: a new quantile is read off the refitted tail.
    kind = "pot" if isinstance(source.detector.thresholder_, PotThreshold) else "quantile"
    thresholder: QuantileThreshold = (
        make_threshold(kind, quantile).fit(calibration)
        if quantile is not None
        else FixedThreshold(float(value)).fit(calibration)  # type: ignore[arg-type]
    )
    # A shallow copy shares the network and preprocessor; only the threshold differs.
    detector = copy.copy(source.detector)
    detector.thresholder_ = thresholder
    detector.threshold_ = thresholder.threshold_
    registered = register_threshold_change(
        source, detector, reason, tracking, changed_by=changed_by, alias=alias
    )
    return registered, source.detector.threshold_, float(np.float64(thresholder.threshold_))
