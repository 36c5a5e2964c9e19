"""Registry operations: the promotion gate on a hold-out slice, and reviewer threshold changes."""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import numpy as np
import pandas as pd

from anomaly.config import TrainSettings
from anomaly.data.images import ImageBatch

# Re-exported: the split lived here.
from anomaly.data.splits import split_holdout as split_holdout
from anomaly.detectors import AutoencoderDetector
from anomaly.errors import SchemaError
from anomaly.models import data_kind
from anomaly.monitoring import GateResult, GateSettings, promotion_gate
from anomaly.scoring import scoreable_scores
from anomaly.thresholds import FixedThreshold, PotThreshold, QuantileThreshold, make_threshold
from anomaly.tracking import (
    CHAMPION,
    RegisteredModel,
    TrackingConfig,
    alias_version,
    load_registered_detector,
    promote,
    recorded_train_settings,
    register_threshold_change,
)

logger = logging.getLogger(__name__)


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
    if isinstance(holdout, ImageBatch) and labelled is not None:
        raise ValueError("labelled gate data is not supported for image models yet")
    holdout_scores, _ = scoreable_scores(detector, holdout)
    labelled_scores = labels = None
    if labelled is not None:
        if settings.label_column not in labelled.columns:
            raise SchemaError(
                f"labelled validation data has no label column '{settings.label_column}' "
                f"(columns: {list(labelled.columns)[:20]})",
                column=settings.label_column,
            )
        labelled_scores, ok = scoreable_scores(
            detector, labelled.drop(columns=[settings.label_column])
        )
        labels = labelled[settings.label_column].to_numpy()[ok]
    return promotion_gate(
        holdout_scores,
        detector.threshold_,
        detector.thresholder_.q,
        settings,
        labelled_scores,
        labels,
    )


def incompatibility(new: AutoencoderDetector, champion: AutoencoderDetector) -> str | None:
    """Why ``new`` cannot take over from ``champion`` (other data kind or input), or None.

    Everything scoring ``models:/NAME@champion`` (the landing folder, scheduled runs) was set up
    for the champion's input: a version that wants other input would quarantine every file.
    """
    kind, old = data_kind(new.model, new.window), data_kind(champion.model, champion.window)
    if kind != old:
        return f"it scores {kind} data, the champion scores {old} data"
    if kind == "images":
        wanted, had = tuple(new.image_shape_), tuple(champion.image_shape_)
        return None if wanted == had else f"it takes images of shape {wanted}, the champion {had}"
    # Columns are matched by name when scoring, so their order does not matter.
    new_cols = {c.name: (c.kind, c.dtype) for c in new.schema_.features}
    old_cols = {c.name: (c.kind, c.dtype) for c in champion.schema_.features}
    if new_cols == old_cols:
        return None
    changes = {
        "adds": sorted(new_cols.keys() - old_cols.keys()),
        "drops": sorted(old_cols.keys() - new_cols.keys()),
        # The same column with another kind (numeric, categorical) or type.
        "retypes": sorted(
            n for n in new_cols.keys() & old_cols.keys() if new_cols[n] != old_cols[n]
        ),
    }
    parts = [f"{label} {names}" for label, names in changes.items() if names]
    return "its input schema differs from the champion's: it " + ", ".join(parts)


def gate_and_promote(
    model: RegisteredModel,
    detector: AutoencoderDetector,
    holdout: pd.DataFrame,
    tracking: TrackingConfig,
    settings: GateSettings | None = None,
    labelled: pd.DataFrame | None = None,
) -> GateResult:
    """Run the gate for a registered version and set ``champion`` on it only if it passes.

    A version whose data kind or input schema differs from the current champion's never
    passes, whatever its figures: the gate refuses it with that reason.

    An inconclusive verdict (a hold-out too small to tell, see :func:`promotion_gate`) keeps
    the current champion, unless ``settings.allow_inconclusive``. The first version of a name is
    promoted on an inconclusive verdict all the same, with a warning and the reason tagged: there
    is no champion to keep, and without one nothing can score (``anomaly serve``, the landing
    folder), so refusing it would only stop a new user with a small data set. A first version
    that *failed* is not promoted.
    """
    # Asked first: a version for other input is refused whatever the hold-out shows.
    refusal = champion_refusal(model, detector, tracking)
    result = evaluate_gate(detector, holdout, settings, labelled)
    if refusal is not None:
        result = replace(
            result, verdict="failed", promoted=False, reasons=(*result.reasons, refusal)
        )
    elif result.verdict == "inconclusive" and not result.promoted:
        current = alias_version(model.name, CHAMPION, tracking)
        if current is None or current == model.version:
            first = f"promoted all the same: the first version of {model.name}, no champion to keep"
            result = replace(result, promoted=True, reasons=(*result.reasons, first))
    promote(model, result, tracking)
    return result


def champion_settings(tracking: TrackingConfig) -> TrainSettings | None:
    """The training settings of the current champion, for a retrain; None without a record."""
    name = tracking.registered_model_name
    version = alias_version(name, CHAMPION, tracking)
    if version is None:
        logger.warning("no %s@%s yet: training with the given or default settings", name, CHAMPION)
        return None
    recorded = recorded_train_settings(name, version, tracking)
    if recorded is None:
        logger.warning(
            "%s version %s recorded no training settings: training with the defaults", name, version
        )
        return None
    logger.info("retraining with the settings of %s version %s", name, version)
    return TrainSettings.model_validate(recorded)


def champion_refusal(
    model: RegisteredModel, detector: AutoencoderDetector, tracking: TrackingConfig
) -> str | None:
    """Why the registered ``model`` may not replace the current champion whatever its figures."""
    current = alias_version(model.name, CHAMPION, tracking)
    if current is None or current == model.version:
        return None
    champion = load_registered_detector(f"models:/{model.name}/{current}", tracking, "cpu")
    if (why := incompatibility(detector, champion.detector)) is None:
        return None
    return f"not promoted over version {current}: {why}; register it under another name"


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
