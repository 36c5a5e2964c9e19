"""Scores at two levels (per feature, per sample) and batch scoring of tables with rejects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from anomaly.data.schema import REJECT_COLUMNS, invalid_row_reasons
from anomaly.errors import SchemaError

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector

Reduction = Literal["mean", "max"]

REDUCTIONS: tuple[str, ...] = ("mean", "max")


def reduce_errors(errors: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
    """Reduce per-feature errors ``(n_samples, ...)`` to one score per sample ``(n_samples,)``.

    ``mean`` suits broad deviations; ``max`` reacts to a single broken feature.
    """
    flat = errors.reshape(len(errors), -1)
    if reduction == "mean":
        return flat.mean(dim=1)
    if reduction == "max":
        return flat.amax(dim=1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def source_matrix(sources: np.ndarray, n_sources: int) -> torch.Tensor:
    """``(n_encoded, n_sources)`` 0/1 matrix with a 1 where encoded column ``j`` came from input ``sources[j]``.

    ``errors @ source_matrix(...)`` sums encoded-column errors back onto input columns
    (one-hot columns share one), as one matrix product on the device.
    """
    matrix = torch.zeros(len(sources), n_sources, dtype=torch.float32)
    matrix[torch.arange(len(sources)), torch.as_tensor(sources, dtype=torch.long)] = 1.0
    return matrix


def top_contributors(per_feature: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The feature with the largest error per row and its share of the row's total error."""
    if per_feature.shape[0] == 0:
        return np.array([], dtype=object), np.array([], dtype=np.float64)
    top = per_feature.argmax(axis=1)
    total = per_feature.sum(axis=1)
    share = np.divide(
        per_feature[np.arange(len(top)), top], total, out=np.zeros(len(top)), where=total > 0
    )
    return np.asarray(names, dtype=object)[top], share


def score_rows(detector: AutoencoderDetector, frame: pd.DataFrame) -> pd.DataFrame:
    """Score every row of ``frame``, aligned with it; rows that cannot be scored get a reason.

    With ``nan_policy="impute"`` every row is scored (non-finite values take the fit median);
    with ``"reject"`` rows with a missing or non-finite feature keep NaN scores and a
    ``reject_reason`` naming the columns.

    Returns
    -------
    pandas.DataFrame
        Index of ``frame``; columns ``anomaly_score``, ``p_value``, ``is_anomaly``,
        ``top_feature``, ``top_feature_share``, ``reject_reason`` (empty when scored).
    """
    detector._check_fitted()
    detector.schema_.validate(frame, require_keys=detector.window is not None)
    return _score_valid_frame(detector, frame)[0]


def _score_valid_frame(
    detector: AutoencoderDetector,
    frame: pd.DataFrame,
    context: pd.DataFrame | None = None,
    source: str | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """:func:`score_rows` for a frame already checked against the schema, with the series
    handling counts (empty for tables)."""
    if detector.window is not None:
        return _score_series_frame(detector, frame, context, source)
    impute = detector.nan_policy == "impute"
    reasons = invalid_row_reasons(frame, detector.schema_)
    ok = np.ones(len(frame), dtype=bool) if impute else (reasons == "").to_numpy()
    if impute:
        reasons[:] = ""
    scores, per_feature = detector._score_encoded(
        detector.preprocessor_.transform(frame[ok], impute=impute), attribute=True
    )
    top, share = top_contributors(per_feature, detector.preprocessor_.input_names_)

    out = pd.DataFrame(index=frame.index)
    out["anomaly_score"] = np.full(len(frame), np.nan)
    out["p_value"] = np.full(len(frame), np.nan)
    out["is_anomaly"] = False
    out["top_feature"] = pd.Series(pd.NA, index=frame.index, dtype="string")
    out["top_feature_share"] = np.full(len(frame), np.nan)
    out.loc[ok, "anomaly_score"] = scores
    out.loc[ok, "p_value"] = detector.thresholder_.p_values(scores)
    out.loc[ok, "is_anomaly"] = detector.thresholder_.predict(scores)
    out.loc[ok, "top_feature"] = top
    out.loc[ok, "top_feature_share"] = share
    out["reject_reason"] = reasons.astype("string")
    return out, {}


def _score_series_frame(
    detector: AutoencoderDetector,
    frame: pd.DataFrame,
    context: pd.DataFrame | None,
    source: str | None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    values, reasons, layout = detector._series_rows(frame, context, source)
    ok = reasons == ""
    scores = values[ok, 0].astype(np.float64)
    top, share = top_contributors(values[ok, 1:], detector.schema_.feature_names)
    out = pd.DataFrame(index=frame.index)
    out["anomaly_score"] = values[:, 0].astype(np.float64)
    p_values = np.full(len(frame), np.nan)
    p_values[ok] = detector.thresholder_.p_values(scores)
    out["p_value"] = p_values
    flagged = np.zeros(len(frame), dtype=bool)
    flagged[ok] = detector.thresholder_.predict(scores)
    out["is_anomaly"] = flagged
    top_all = np.full(len(frame), None, dtype=object)
    top_all[ok] = top
    out["top_feature"] = pd.Series(top_all, index=frame.index, dtype="string")
    share_all = np.full(len(frame), np.nan)
    share_all[ok] = share
    out["top_feature_share"] = share_all
    out["reject_reason"] = pd.Series(reasons, index=frame.index, dtype="string")
    return out, layout.counts


@dataclass(frozen=True)
class ScoredBatch:
    """A scored table split into scored rows and rejected rows (with a ``reason``)."""

    scored: pd.DataFrame
    rejected: pd.DataFrame
    # Time series only: rows or points each duplicate/gap/context decision touched.
    series_counts: dict[str, int] = field(default_factory=dict)

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
    For a time-series detector, ``context`` is the previous batch's
    :meth:`~anomaly.detectors.AutoencoderDetector.next_context`.
    """
    detector._check_fitted()
    detector.schema_.validate(frame, source=source, require_keys=True)
    clashes = sorted(set(map(str, frame.columns)) & REJECT_COLUMNS)
    if clashes:
        raise SchemaError(
            f"input column(s) {clashes} would be overwritten in the rejects output; rename them",
            column=clashes[0],
            source=source,
        )
    rows, series_counts = _score_valid_frame(detector, frame, context, source)
    good = (rows["reject_reason"] == "").to_numpy()
    keys = list(detector.schema_.keys)

    # Position of each row in its input, so every output row traces back even without keys.
    position = np.arange(len(frame), dtype=np.int64)
    scored = frame.loc[good, keys].reset_index(drop=True)
    for column in ("anomaly_score", "p_value", "is_anomaly"):
        scored[column] = rows.loc[good, column].to_numpy()
    scored["is_anomaly"] = scored["is_anomaly"].astype(bool)
    scored["threshold"] = detector.threshold_
    scored["model_name"] = pd.Series([model_name] * len(scored), dtype="string")
    scored["model_version"] = pd.Series([str(model_version)] * len(scored), dtype="string")
    scored["top_feature"] = rows.loc[good, "top_feature"].to_numpy()
    scored["top_feature_share"] = rows.loc[good, "top_feature_share"].to_numpy()
    scored["source_row"] = position[good]

    rejected = frame.loc[~good].reset_index(drop=True)
    rejected["reason"] = rows.loc[~good, "reject_reason"].to_numpy()
    rejected["source_row"] = position[~good]
    if source is not None:
        scored["source_file"] = source
        rejected["source_file"] = source
    if len(scored) + len(rejected) != len(frame):  # pragma: no cover - an invariant, not a branch
        raise AssertionError(
            f"rows in {len(frame)} != scored {len(scored)} + rejected {len(rejected)}"
        )
    return ScoredBatch(scored=scored, rejected=rejected, series_counts=series_counts)
