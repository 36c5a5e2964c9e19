"""Scores at two levels (per feature or pixel, per sample) and batch scoring of tables and images with rejects."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from anomaly.data.images import ImageBatch
from anomaly.data.keys import KeyIndex
from anomaly.data.schema import REJECT_COLUMNS
from anomaly.errors import SchemaError
from anomaly.quarantine import QuarantinedFile

# Re-exported: these lived here before every kind shared them.
from anomaly.reduction import REDUCTIONS as REDUCTIONS
from anomaly.reduction import Reduction as Reduction
from anomaly.reduction import reduce_errors as reduce_errors
from anomaly.reduction import source_matrix as source_matrix

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector
    from anomaly.kinds.base import RowErrors


def top_feature_index(per_feature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the feature with the largest error per row ``(n,)`` and its share of the row's total error ``(n,)``."""
    if per_feature.shape[0] == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.float64)
    top = per_feature.argmax(axis=1)
    total = per_feature.sum(axis=1)
    share = np.divide(
        per_feature[np.arange(len(top)), top], total, out=np.zeros(len(top)), where=total > 0
    )
    return top, share


def top_contributors(per_feature: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The feature with the largest error per row and its share of the row's total error."""
    top, share = top_feature_index(per_feature)
    return np.asarray(names, dtype=object)[top], share


@dataclass(frozen=True)
class RowScores:
    """Scores of a table's rows as arrays: what every output format is built from.

    ``n`` is the number of rows in, ``n_ok`` the number scored (``ok.sum()``).
    """

    ok: np.ndarray  # (n,) bool: the row was scored
    scores: np.ndarray  # (n_ok,) float64, higher = more anomalous
    p_values: np.ndarray  # (n_ok,) float64
    is_anomaly: np.ndarray  # (n_ok,) bool
    top_index: np.ndarray  # (n_ok,) int64, into ``feature_names``
    top_share: np.ndarray  # (n_ok,) float64
    reasons: np.ndarray  # (n - n_ok,) object: why each row that was not scored was set aside
    feature_names: tuple[str, ...]
    # (n_ok,) object: features far outside the training range ("a, b"), None when none.
    out_of_range: np.ndarray
    # Time series only: (n_ok, n_features) error of each point per feature (for events).
    per_feature: np.ndarray | None = None

    @property
    def top_feature(self) -> np.ndarray:
        """Name of the top feature of each scored row ``(n_ok,)``."""
        return np.asarray(self.feature_names, dtype=object)[self.top_index]


def score_row_arrays(
    detector: AutoencoderDetector,
    frame: pd.DataFrame,
    context: pd.DataFrame | None = None,
    source: str | None = None,
) -> RowScores:
    """Score ``frame`` (already checked against the schema) into :class:`RowScores`.

    The detector's data kind folds its errors onto rows and sets aside rows it cannot score
    (tables: missing or non-finite features with ``nan_policy="reject"``; series: points the
    layout refuses); thresholds, p-values and attribution are the same for every kind.
    """
    errors = detector._row_errors(frame, context, source)
    return _row_scores(detector, frame, errors)


def _row_scores(detector: AutoencoderDetector, frame: pd.DataFrame, errors: RowErrors) -> RowScores:
    top, share = top_feature_index(errors.per_feature)
    thresholder = detector.thresholder_
    ok = errors.ok
    return RowScores(
        ok=ok,
        scores=errors.scores,
        p_values=thresholder.p_values(errors.scores),
        is_anomaly=np.asarray(thresholder.predict(errors.scores), dtype=bool),
        top_index=top,
        top_share=share,
        reasons=errors.reasons,
        feature_names=errors.feature_names,
        out_of_range=detector.schema_.out_of_range(frame if ok.all() else frame[ok]),
        per_feature=errors.per_feature if errors.point_errors else None,
    )


def scoreable_scores(
    detector: AutoencoderDetector,
    batch: pd.DataFrame | ImageBatch,
    context: pd.DataFrame | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the rows (or decoded images) of ``batch`` that can be scored, in order, and
    which rows those are ``(n,) bool``; the others are left out.

    What the promotion gate needs of a hold-out: no outputs, p-values or attribution.
    """
    if isinstance(batch, ImageBatch):
        return detector.score_samples(batch.images), np.ones(len(batch.images), dtype=bool)
    detector._check_fitted()
    detector.schema_.validate(batch, require_keys=detector.window is not None)
    errors = detector._row_errors(batch, context)
    return errors.scores, errors.ok


def score_rows(detector: AutoencoderDetector, frame: pd.DataFrame) -> pd.DataFrame:
    """Score every row of ``frame``, aligned with it; rows that cannot be scored get a reason.

    With ``nan_policy="impute"`` every row is scored (non-finite values take the fit median);
    with ``"reject"`` rows with a missing or non-finite feature keep NaN scores and a
    ``reject_reason`` naming the columns.

    Returns
    -------
    pandas.DataFrame
        Index of ``frame``; columns ``anomaly_score``, ``p_value``, ``is_anomaly``,
        ``top_feature``, ``top_feature_share``, ``out_of_range`` (features far outside the
        training range, see :meth:`TableSchema.out_of_range`), ``reject_reason`` (empty when
        scored).
    """
    detector._check_fitted()
    detector.schema_.validate(frame, require_keys=detector.window is not None)
    rows = score_row_arrays(detector, frame)
    ok, n = rows.ok, len(frame)

    def spread(values: np.ndarray, fill: Any, dtype: Any) -> np.ndarray:
        out = np.full(n, fill, dtype=dtype)
        out[ok] = values
        return out

    reasons = np.full(n, "", dtype=object)
    reasons[~ok] = rows.reasons
    return pd.DataFrame(
        {
            "anomaly_score": spread(rows.scores, np.nan, np.float64),
            "p_value": spread(rows.p_values, np.nan, np.float64),
            "is_anomaly": spread(rows.is_anomaly, False, bool),
            "top_feature": pd.array(spread(rows.top_feature, pd.NA, object), dtype="string"),
            "top_feature_share": spread(rows.top_share, np.nan, np.float64),
            "out_of_range": pd.array(spread(rows.out_of_range, pd.NA, object), dtype="string"),
            "reject_reason": pd.array(reasons, dtype="string"),
        },
        index=frame.index,
    )


def duplicate_rows(
    keys: pd.DataFrame, rows: np.ndarray, index: KeyIndex | None = None
) -> pd.arrays.IntegerArray:
    """``duplicate_of_row``: the source row of an earlier scored row of the same file with the
    same key values, or NA; all NA without key columns. ``index`` carries keys across batches.
    """
    if not len(keys.columns):
        return pd.array([pd.NA] * len(keys), dtype="Int64")
    earlier = (index or KeyIndex()).earlier_rows(keys, rows)
    return pd.arrays.IntegerArray(earlier, earlier < 0)


def check_reject_columns(columns: Iterable[object], source: str | None = None) -> None:
    """Refuse input columns that the rejects output would overwrite (``reason``, ``source_row`` ...)."""
    clashes = sorted(set(map(str, columns)) & REJECT_COLUMNS)
    if clashes:
        raise SchemaError(
            f"input column(s) {clashes} would be overwritten in the rejects output; rename them",
            column=clashes[0],
            source=source,
        )


@dataclass(frozen=True)
class ImageReview:
    """What a reviewer of an image batch looks at, computed while scoring.

    Attributes
    ----------
    top_rows : ndarray (k,)
        Positions in ``ScoredBatch.scored`` of the highest-scoring images, highest first.
    top_images, top_reconstructions : ndarray (k, C, H, W)
    top_error_maps : ndarray (k, H, W)
    flagged_rows : ndarray (m,)
        Positions in ``ScoredBatch.scored`` of every flagged image.
    flagged_error_maps : ndarray (m, H, W)
        Their error maps (for heat maps beside the output).
    top_scores : ndarray (k,), optional
        Scores of the top images: a streamed run keeps only a sample of all its scores, so
        ``top_rows`` cannot index them.
    flagged_images : ndarray (m, C, H, W), optional
        The flagged images, drawn under their heat maps.
    """

    top_rows: np.ndarray
    top_images: np.ndarray
    top_reconstructions: np.ndarray
    top_error_maps: np.ndarray
    flagged_rows: np.ndarray
    flagged_error_maps: np.ndarray
    top_scores: np.ndarray | None = None
    flagged_images: np.ndarray | None = None


@dataclass(frozen=True)
class ScoredBatch:
    """A scored table split into scored rows and rejected rows (with a ``reason``).

    Image batches also carry an :class:`ImageReview` (top-scoring and flagged images).
    """

    scored: pd.DataFrame
    rejected: pd.DataFrame
    # Time series only: rows or points each duplicate/gap/context decision touched.
    series_counts: dict[str, int] = field(default_factory=dict)
    images: ImageReview | None = None
    # Input files set aside whole (not Parquet, a column missing ...), each with its reason.
    quarantined: tuple[QuarantinedFile, ...] = ()
    # Time series only: (n_scored, n_features) per-feature error of each scored row, for events.
    feature_errors: np.ndarray | None = None

    @property
    def n_quarantined_rows(self) -> int:
        """Rows in quarantined files whose row count could be read."""
        return sum(f.rows or 0 for f in self.quarantined)

    @property
    def n_scored(self) -> int:
        return len(self.scored)

    @property
    def n_rejected(self) -> int:
        return len(self.rejected)

    @property
    def n_rows(self) -> int:
        return self.n_scored + self.n_rejected

    @property
    def n_flagged(self) -> int:
        return int(self.scored["is_anomaly"].sum())

    @property
    def anomaly_rate(self) -> float:
        return self.n_flagged / self.n_scored if self.n_scored else 0.0

    @property
    def scores(self) -> np.ndarray:
        """Anomaly scores of the scored rows ``(n_scored,)``."""
        return self.scored["anomaly_score"].to_numpy(dtype=np.float64)


class BatchSummary(Protocol):
    """What run summaries and MLflow logging need from a scored batch, in memory or streamed.

    ``scores`` are all the scored rows' scores, or for a streamed batch a uniform sample of them.
    """

    @property
    def n_rows(self) -> int: ...
    @property
    def n_scored(self) -> int: ...
    @property
    def n_rejected(self) -> int: ...
    @property
    def n_flagged(self) -> int: ...
    @property
    def anomaly_rate(self) -> float: ...
    @property
    def scores(self) -> np.ndarray: ...
    @property
    def series_counts(self) -> dict[str, int]: ...
    @property
    def quarantined(self) -> tuple[QuarantinedFile, ...]: ...
    @property
    def n_quarantined_rows(self) -> int: ...


def score_frame(
    detector: AutoencoderDetector,
    frame: pd.DataFrame,
    model_name: str = "",
    model_version: str = "",
    source: str | None = None,
    context: pd.DataFrame | None = None,
) -> ScoredBatch:
    """Score a table for output: key columns plus scores for good rows, original rows plus a reason for the rest.

    The key columns recorded at fit must be present (``SchemaError`` otherwise, naming the
    column and ``source``). Every input row ends up in exactly one of the two tables, with its
    position in ``frame`` as ``source_row`` (and ``source_file`` when ``source`` is given).
    A scored row whose keys repeat an earlier scored row's is still scored, with that row's
    position in ``duplicate_of_row``.
    For a time-series detector, ``context`` is the previous batch's
    :meth:`~anomaly.detectors.AutoencoderDetector.next_context`.
    """
    detector._check_fitted()
    detector.schema_.validate(frame, source=source, require_keys=True)
    check_reject_columns(frame.columns, source)
    errors = detector._row_errors(frame, context, source)
    rows = _row_scores(detector, frame, errors)
    good = rows.ok
    keys = list(detector.schema_.keys)
    n_good = int(good.sum())

    # Position of each row in its input, so every output row traces back even without keys.
    position = np.arange(len(frame), dtype=np.int64)
    scored = frame.loc[good, keys].reset_index(drop=True)
    scored["anomaly_score"] = rows.scores
    scored["p_value"] = rows.p_values
    scored["is_anomaly"] = rows.is_anomaly
    scored["threshold"] = detector.threshold_
    scored["model_name"] = pd.array([model_name] * n_good, dtype="string")
    scored["model_version"] = pd.array([str(model_version)] * n_good, dtype="string")
    scored["top_feature"] = rows.top_feature
    scored["top_feature_share"] = rows.top_share
    scored["out_of_range"] = pd.array(rows.out_of_range, dtype="string")
    scored["duplicate_of_row"] = duplicate_rows(scored[keys], position[good])
    scored["source_row"] = position[good]

    rejected = frame.loc[~good].reset_index(drop=True)
    rejected["reason"] = rows.reasons
    rejected["source_row"] = position[~good]
    if source is not None:
        scored["source_file"] = source
        rejected["source_file"] = source
    if len(scored) + len(rejected) != len(frame):  # pragma: no cover - an invariant, not a branch
        raise AssertionError(
            f"rows in {len(frame)} != scored {len(scored)} + rejected {len(rejected)}"
        )
    return ScoredBatch(
        scored=scored,
        rejected=rejected,
        series_counts=errors.counts,
        feature_errors=rows.per_feature,
    )


def score_images(
    detector: AutoencoderDetector,
    batch: ImageBatch,
    model_name: str = "",
    model_version: str = "",
    n_top: int = 8,
) -> ScoredBatch:
    """Score decoded images for output: one row per image with its keys, images that could not be decoded as rejects.

    Scored rows carry the batch's key columns (``path`` for folders, the key columns for
    Parquet), ``anomaly_score``, ``p_value``, ``is_anomaly``, ``threshold``, ``model_name``,
    ``model_version`` and ``source_file`` (and ``source_row``); rejected rows keep their keys
    with a ``reason``. Rows in = scored + rejected.
    """
    detector._check_fitted()
    scores = detector.score_samples(batch.images)
    scored = batch.index.copy()
    position = len(batch.key_columns)
    scored.insert(position, "anomaly_score", scores)
    scored.insert(position + 1, "p_value", detector.thresholder_.p_values(scores))
    scored.insert(position + 2, "is_anomaly", detector.thresholder_.predict(scores).astype(bool))
    scored.insert(position + 3, "threshold", detector.threshold_)
    scored.insert(position + 4, "model_name", pd.Series([model_name] * len(scored), dtype="string"))
    scored.insert(
        position + 5, "model_version", pd.Series([str(model_version)] * len(scored), dtype="string")
    )
    top = np.argsort(-scores, kind="stable")[:n_top]
    flagged = np.flatnonzero(scored["is_anomaly"].to_numpy())
    review = ImageReview(
        top_rows=top,
        top_images=batch.images[top],
        top_reconstructions=detector.reconstruct(batch.images[top]),
        top_error_maps=detector.error_maps(batch.images[top]),
        flagged_rows=flagged,
        flagged_error_maps=detector.error_maps(batch.images[flagged]),
        top_scores=scores[top],
        flagged_images=batch.images[flagged],
    )
    return ScoredBatch(
        scored=scored,
        rejected=batch.rejected.copy(),
        images=review,
        quarantined=batch.quarantined,
    )
