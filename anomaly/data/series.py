"""Time-series tables: read Parquet or CSV, order points per series, apply the duplicate and gap
policies, and keep the context (last points) a following batch continues from.

A table has an optional time column, an optional series id column and numeric feature columns.
:func:`build_layout` turns it into points ready for windowing: sorted per series, duplicates
resolved, gaps split or filled, with every input row either mapped to a point or given a reason.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from anomaly.data.parquet import read_table
from anomaly.data.paths import PARQUET_SUFFIXES, list_inputs
from anomaly.errors import DataFileError, SchemaError

logger = logging.getLogger(__name__)

DuplicatePolicy = Literal["reject", "first", "last", "mean"]
GapPolicy = Literal["split", "resample", "ignore"]
GapFill = Literal["linear", "ffill"]
DUPLICATE_POLICIES: tuple[str, ...] = ("reject", "first", "last", "mean")
GAP_POLICIES: tuple[str, ...] = ("split", "resample", "ignore")
GAP_FILLS: tuple[str, ...] = ("linear", "ffill")
SINGLE_SERIES = ""


# ---------------------------------------------------------------------------------------- reading
def list_series_files(source: str | os.PathLike[str]) -> list[Path]:
    """A Parquet or CSV file, or every Parquet / CSV file under a directory or a glob, sorted."""
    listing = list_inputs(source, (*PARQUET_SUFFIXES, ".csv"))
    listing.log_skipped(os.fspath(source))
    if not listing.files:
        raise DataFileError(f"{os.fspath(source)}: no Parquet or CSV files found")
    return list(listing.files)


def read_series_file(path: str | os.PathLike[str], time_column: str | None = None) -> pd.DataFrame:
    """Read one Parquet or CSV file (CSV separator detected: ``,`` ``;`` or tab).

    CSV holds text only: ``time_column``, when it is text there, is parsed into timestamps, so
    the series' time axis, its plots and the outputs keep a timestamp type as from Parquet.

    Raises
    ------
    DataFileError
        If the file cannot be read, or ``time_column`` holds a value that is not a timestamp
        (naming the column, the row and the value).
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return read_table(path)
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline()
        sep = max((",", ";", "\t"), key=header.count)
        frame = pd.read_csv(path, sep=sep)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataFileError(f"{path}: cannot read as CSV ({exc})") from exc
    if time_column is not None and time_column in frame.columns:
        frame[time_column] = _parse_times(frame[time_column], time_column, path)
    return frame


def _parse_times(column: pd.Series, name: str, path: Path) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        return column  # positions or epoch numbers: already an axis
    parsed = pd.to_datetime(column, errors="coerce", format="mixed")
    bad = parsed.isna() & column.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataFileError(
            f"{path}: column {name!r} holds {int(bad.sum())} value(s) that are not timestamps "
            f"(first: row {row}, {column.iloc[row]!r}); expected e.g. 2026-01-31 12:00:00",
            source=str(path),
        )
    return parsed


def read_series(source: str | os.PathLike[str], time_column: str | None = None) -> pd.DataFrame:
    """Read every series file of ``source`` into one frame (columns must agree across files)."""
    files = list_series_files(source)
    frames = [read_series_file(p, time_column) for p in files]
    for path, frame in zip(files[1:], frames[1:], strict=True):
        if list(frame.columns) != list(frames[0].columns):
            raise DataFileError(f"{path}: columns differ from {files[0]}")
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# ---------------------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class SeriesPolicy:
    """Which columns make a series and how irregular timestamps are handled.

    Attributes
    ----------
    time_column : str or None
        Timestamps (datetime, or numbers such as seconds); None: rows are already in time order
        and evenly spaced.
    series_column : str or None
        Series id; rows of different ids never share a window. None: one series.
    features : tuple of str
        Numeric feature columns, in model order.
    duplicates : {"reject", "first", "last", "mean"}
        Rows sharing a series and timestamp: reject all but the first (with a reason), or merge
        them into one point (each row then gets that point's score).
    gaps : {"split", "resample", "ignore"}
        A step longer than ``gap_tolerance`` x ``frequency``: start a new stretch there (no window spans the
        gap), insert points on the ``frequency`` grid filled by ``gap_fill`` (inserted points are
        modelled but never output), or treat the points as contiguous.
    frequency : float or None
        Expected step, in seconds for datetime columns; None: no gap handling.
    gap_tolerance : float
        A step longer than ``gap_tolerance`` x ``frequency`` is a gap. The default 2.5 lets one
        missed sample (a step of 2) pass as sampling jitter, as real loggers often show.
    """

    time_column: str | None
    series_column: str | None
    features: tuple[str, ...]
    duplicates: str = "reject"
    gaps: str = "split"
    gap_fill: str = "linear"
    frequency: float | None = None
    gap_tolerance: float = 2.5

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("duplicate_policy", self.duplicates, DUPLICATE_POLICIES),
            ("gap_policy", self.gaps, GAP_POLICIES),
            ("gap_fill", self.gap_fill, GAP_FILLS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")

    @property
    def key_columns(self) -> list[str]:
        return [c for c in (self.series_column, self.time_column) if c is not None]


def time_values(frame: pd.DataFrame, column: str, source: str | None) -> tuple[np.ndarray, bool]:
    """Timestamps as float seconds (NaN where missing or unparseable) and whether they are datetimes."""
    raw = frame[column]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return raw.to_numpy(dtype=np.float64, na_value=np.nan), False
    if not pd.api.types.is_datetime64_any_dtype(raw):
        try:
            raw = pd.to_datetime(raw, errors="coerce", format="mixed")
        except (TypeError, ValueError) as exc:
            raise SchemaError(
                f"time column {column!r}: cannot parse as timestamps ({exc})",
                column=column,
                source=source,
            ) from exc
    if getattr(raw.dt, "tz", None) is not None:
        raw = raw.dt.tz_convert("UTC").dt.tz_localize(None)
    nanos = raw.to_numpy(dtype="datetime64[ns]").astype(np.int64).astype(np.float64)
    nanos[raw.isna().to_numpy()] = np.nan
    return nanos / 1e9, True


def infer_frequency(frame: pd.DataFrame, policy: SeriesPolicy) -> float | None:
    """The median positive step between consecutive timestamps of a series (seconds), or None."""
    if policy.time_column is None:
        return None
    times, _ = time_values(frame, policy.time_column, None)
    ids = series_ids(frame, policy)
    order = np.lexsort((times, ids))
    t, s = times[order], ids[order]
    steps = np.diff(t)[(s[1:] == s[:-1]) & np.isfinite(np.diff(t))]
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else None


def series_ids(frame: pd.DataFrame, policy: SeriesPolicy) -> np.ndarray:
    if policy.series_column is None:
        return np.full(len(frame), SINGLE_SERIES, dtype=object)
    ids = frame[policy.series_column]
    out = ids.astype(str).to_numpy(dtype=object)
    out[ids.isna().to_numpy()] = None
    return out


# ---------------------------------------------------------------------------------------- layout
@dataclass
class SeriesLayout:
    """Points ready for windowing, and how the input rows map onto them.

    Attributes
    ----------
    values : ndarray (n_points, n_features)
        Raw feature values of every point (context points first within each series).
    series : ndarray (n_points,)
        Series id of each point (``""`` for a single series).
    times : ndarray (n_points,)
        Timestamps in seconds (NaN when the table has no time column).
    is_context : ndarray (n_points,)
        True for points carried over from an earlier batch.
    is_inserted : ndarray (n_points,)
        True for points inserted into gaps (``gaps="resample"``); no row maps to them.
    segments : list of (start, end)
        Stretches of points scored as one series: a window never crosses a stretch boundary.
    row_point : ndarray (n_rows,)
        The point each input row became, -1 for rejected rows.
    reasons : ndarray (n_rows,)
        ``""`` for rows mapped to a point, else why the row was rejected.
    counts : dict
        How many rows or points each policy decision touched.
    short_rows : ndarray (n_rows,) or None
        True for rows rejected because their stretch is shorter than the window.
    """

    values: np.ndarray
    series: np.ndarray
    times: np.ndarray
    is_context: np.ndarray
    is_inserted: np.ndarray
    segments: list[tuple[int, int]]
    row_point: np.ndarray
    reasons: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)
    short_rows: np.ndarray | None = None


def _note(reasons: np.ndarray, mask: np.ndarray, reason: str | np.ndarray) -> None:
    """Give rows in ``mask`` that have no reason yet the ``reason``."""
    todo = mask & (reasons == "")
    reasons[todo] = reason if isinstance(reason, str) else reason[todo]


def build_layout(
    frame: pd.DataFrame,
    policy: SeriesPolicy,
    *,
    invalid: np.ndarray | None = None,
    context: pd.DataFrame | None = None,
    window: int = 1,
    source: str | None = None,
) -> SeriesLayout:
    """Order, de-duplicate and regularise ``frame``'s rows per series into points.

    Parameters
    ----------
    frame : DataFrame
        The batch; must hold the policy's time, series and feature columns.
    invalid : ndarray of str, optional
        A reason per row that makes it unusable (e.g. a NaN feature), ``""`` otherwise; such rows
        are rejected and their timestamps become gaps.
    context : DataFrame, optional
        Earlier points of the same series (see :func:`update_context`); the last ``window - 1``
        of each series before the batch's first timestamp are put in front of the batch.
    window : int
        Stretches shorter than this (context included) cannot be scored: their rows are rejected.
    """
    n_rows = len(frame)
    reasons = np.full(n_rows, "", dtype=object)
    if invalid is not None:
        _note(reasons, invalid != "", invalid)
    counts = {
        "rows": n_rows,
        "invalid_rows": int((reasons != "").sum()),
        "unsorted_rows": 0,
        "duplicate_rows": 0,
        "gaps": 0,
        "points_inserted": 0,
        "short_stretch_rows": 0,
        "context_points": 0,
    }
    ids = series_ids(frame, policy)
    if policy.series_column is not None:
        _note(
            reasons,
            np.array([i is None for i in ids], dtype=bool),  # bool even for zero rows
            f"series id {policy.series_column!r} is missing",
        )
    if policy.time_column is not None:
        times, _ = time_values(frame, policy.time_column, source)
        _note(
            reasons,
            ~np.isfinite(times),
            f"time {policy.time_column!r} is missing or not a timestamp",
        )
    else:
        times = np.arange(n_rows, dtype=np.float64)
    values = frame[list(policy.features)].to_numpy(dtype=np.float64, na_value=np.nan)

    keep = np.flatnonzero(reasons == "")
    # Rows out of time order within their series, as given (counted, then sorted).
    ids_kept, t_kept = ids[keep], times[keep]
    if len(keep) > 1:
        same = ids_kept[1:] == ids_kept[:-1]
        counts["unsorted_rows"] = int(((np.diff(t_kept) < 0) & same).sum())

    point_values: list[np.ndarray] = []
    point_series: list[np.ndarray] = []
    point_times: list[np.ndarray] = []
    point_context: list[np.ndarray] = []
    point_inserted: list[np.ndarray] = []
    segments: list[tuple[int, int]] = []
    row_point = np.full(n_rows, -1, dtype=np.int64)
    offset = 0
    context_groups = _context_groups(context, policy)
    for sid in _ordered_unique(ids_kept):
        rows = keep[ids_kept == sid]
        rows = rows[np.argsort(times[rows], kind="stable")]
        t, v = times[rows], values[rows]
        # Duplicated timestamps: one point per timestamp; `owner` is each row's point.
        first_of = np.r_[True, np.diff(t) != 0]
        owner = np.cumsum(first_of) - 1
        dup = ~first_of
        counts["duplicate_rows"] += int(dup.sum())
        if dup.any():
            if policy.duplicates == "reject":
                first_row = rows[first_of][owner[dup]]
                reasons[rows[dup]] = [
                    f"duplicate timestamp {_fmt_time(frame, policy, r)} in series {sid!r} "
                    f"(kept row {f})"
                    for r, f in zip(rows[dup], first_row, strict=True)
                ]
                rows, t, v = rows[first_of], t[first_of], v[first_of]
                owner = np.arange(len(rows))
            else:
                v = _merge_duplicates(v, owner, policy.duplicates)
                t = t[first_of]
        # Context: the points of this series just before the batch.
        ctx_t, ctx_v = np.zeros(0), np.zeros((0, len(policy.features)))
        if sid in context_groups and window > 1:
            ct, cv = context_groups[sid]
            before = ct < t[0]
            if policy.time_column is None:  # positions only: all of it comes before
                before = np.ones(len(ct), dtype=bool)
            ctx_t, ctx_v = ct[before][-(window - 1) :], cv[before][-(window - 1) :]
        all_t = np.r_[ctx_t, t]
        all_v = np.vstack([ctx_v, v]) if len(ctx_t) else v
        is_ctx = np.r_[np.ones(len(ctx_t), bool), np.zeros(len(t), bool)]
        inserted = np.zeros(len(all_t), dtype=bool)
        point_of_owner = np.arange(len(t)) + len(ctx_t)
        counts["context_points"] += len(ctx_t)
        # Gaps.
        breaks = np.zeros(len(all_t), dtype=bool)
        if policy.frequency and len(all_t) > 1:
            step = np.diff(all_t)
            gap = step > policy.gap_tolerance * policy.frequency
            counts["gaps"] += int(gap.sum())
            if gap.any() and policy.gaps == "split":
                breaks[1:] = gap
            elif gap.any() and policy.gaps == "resample":
                all_t, all_v, is_ctx, inserted, point_of_owner = _fill_gaps(
                    all_t, all_v, is_ctx, point_of_owner, gap, policy
                )
                counts["points_inserted"] += int(inserted.sum())
        inserted_before = offset
        starts = np.flatnonzero(np.r_[True, breaks[1:]])
        ends = np.r_[starts[1:], len(all_t)]
        for s, e in zip(starts, ends, strict=True):
            segments.append((inserted_before + int(s), inserted_before + int(e)))
        row_point[rows] = inserted_before + point_of_owner[owner]
        point_values.append(all_v)
        point_series.append(np.full(len(all_t), sid, dtype=object))
        point_times.append(all_t)
        point_context.append(is_ctx)
        point_inserted.append(inserted)
        offset += len(all_t)

    layout = SeriesLayout(
        values=np.vstack(point_values) if point_values else np.zeros((0, len(policy.features))),
        series=np.concatenate(point_series) if point_series else np.zeros(0, dtype=object),
        times=np.concatenate(point_times) if point_times else np.zeros(0),
        is_context=np.concatenate(point_context) if point_context else np.zeros(0, bool),
        is_inserted=np.concatenate(point_inserted) if point_inserted else np.zeros(0, bool),
        segments=segments,
        row_point=row_point,
        reasons=reasons,
        counts=counts,
    )
    if policy.time_column is None:
        layout.times[:] = np.nan
    _reject_short_stretches(layout, window)
    return layout


def _ordered_unique(ids: np.ndarray) -> list[Any]:
    return list(dict.fromkeys(ids.tolist()))


def _fmt_time(frame: pd.DataFrame, policy: SeriesPolicy, row: int) -> str:
    return str(frame[policy.time_column].iloc[row]) if policy.time_column else str(row)


def _merge_duplicates(values: np.ndarray, owner: np.ndarray, how: str) -> np.ndarray:
    grouped = pd.DataFrame(values).groupby(owner, sort=True)
    merged = {"first": grouped.first, "last": grouped.last, "mean": grouped.mean}[how]()
    return merged.to_numpy(dtype=np.float64)


def _fill_gaps(
    t: np.ndarray,
    v: np.ndarray,
    is_ctx: np.ndarray,
    point_of_owner: np.ndarray,
    gap: np.ndarray,
    policy: SeriesPolicy,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Insert points every ``frequency`` inside each gap, filled linearly or forward."""
    freq = float(policy.frequency)  # type: ignore[arg-type]
    n_insert = np.zeros(len(t), dtype=np.int64)  # points inserted after point i
    steps = np.diff(t)
    n_insert[:-1][gap] = np.maximum(np.round(steps[gap] / freq).astype(np.int64) - 1, 0)
    new_index = np.arange(len(t)) + np.r_[0, np.cumsum(n_insert)[:-1]]
    total = len(t) + int(n_insert.sum())
    out_t = np.empty(total)
    out_v = np.empty((total, v.shape[1]))
    out_ctx = np.zeros(total, dtype=bool)
    out_inserted = np.ones(total, dtype=bool)
    out_t[new_index], out_v[new_index], out_ctx[new_index] = t, v, is_ctx
    out_inserted[new_index] = False
    for i in np.flatnonzero(n_insert):
        k = np.arange(1, n_insert[i] + 1)
        frac = (k / (n_insert[i] + 1))[:, None]
        where = new_index[i] + k
        out_t[where] = t[i] + k * freq
        nxt = v[i + 1] if policy.gap_fill == "linear" else v[i]
        out_v[where] = v[i] + frac * (nxt - v[i])
        # Points filled between two context points are context too.
        out_ctx[where] = is_ctx[i + 1]
    return out_t, out_v, out_ctx, out_inserted, new_index[point_of_owner]


def _reject_short_stretches(layout: SeriesLayout, window: int) -> None:
    mapped = layout.row_point >= 0
    layout.short_rows = np.zeros(len(mapped), dtype=bool)
    for start, end in layout.segments:
        if end - start >= window:
            continue
        rows = mapped & (layout.row_point >= start) & (layout.row_point < end)
        if not rows.any():
            continue
        sid = layout.series[start]
        n_ctx = int(layout.is_context[start:end].sum())
        name = f"series {sid!r}" if sid != SINGLE_SERIES else "the series"
        layout.reasons[rows] = (
            f"{name} has {end - start} consecutive points here ({n_ctx} from earlier batches), "
            f"fewer than the window of {window}"
        )
        layout.row_point[rows] = -1
        layout.short_rows |= rows
        layout.counts["short_stretch_rows"] += int(rows.sum())


# ---------------------------------------------------------------------------------------- context
def _context_groups(
    context: pd.DataFrame | None, policy: SeriesPolicy
) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    if context is None or not len(context):
        return {}
    missing = [c for c in [*policy.key_columns, *policy.features] if c not in context.columns]
    if missing:
        raise SchemaError(
            f"context lacks column(s) {missing}; it was kept for a different model",
            column=missing[0],
        )
    ids = series_ids(context, policy)
    if policy.time_column is not None:
        times, _ = time_values(context, policy.time_column, "context")
    else:
        times = np.arange(len(context), dtype=np.float64)
    values = context[list(policy.features)].to_numpy(dtype=np.float64)
    groups = {}
    for sid in _ordered_unique(ids):
        mask = ids == sid
        order = np.argsort(times[mask], kind="stable")
        groups[sid] = (times[mask][order], values[mask][order])
    return groups


def context_frame(
    layout: SeriesLayout, policy: SeriesPolicy, window: int, datetimes: bool
) -> pd.DataFrame:
    """The points a following batch needs from this one, as a small inspectable table.

    Per series: the last ``window - 1`` points of the batch and the last ``window - 1`` context
    points before the batch. Keeping the latter too means a rerun of this same batch finds the
    same context (points at or after the batch's start are never used as its context), so a
    retried scoring run reproduces its output.
    """
    keep = np.zeros(len(layout.times), dtype=bool)
    n = window - 1
    for sid in _ordered_unique(layout.series):
        idx = np.flatnonzero(layout.series == sid)
        ctx, new = idx[layout.is_context[idx]], idx[~layout.is_context[idx]]
        keep[ctx[-n:] if n else ctx[:0]] = True
        keep[new[-n:] if n else new[:0]] = True
    out = pd.DataFrame(layout.values[keep], columns=list(policy.features))
    if policy.time_column is not None:
        t = layout.times[keep]
        out.insert(0, policy.time_column, pd.to_datetime(t * 1e9) if datetimes else t)
    if policy.series_column is not None:
        out.insert(0, policy.series_column, layout.series[keep].astype(str))
    return out


def update_context(
    old: pd.DataFrame | None, new: pd.DataFrame, policy: SeriesPolicy
) -> pd.DataFrame:
    """Context after a batch: the batch's series from ``new``, every other series kept from ``old``."""
    if old is None or not len(old):
        return new.reset_index(drop=True)
    if policy.series_column is None:
        return new.reset_index(drop=True)
    seen = set(new[policy.series_column].astype(str))
    kept = old.loc[~old[policy.series_column].astype(str).isin(seen)]
    if not len(kept):
        return new.reset_index(drop=True)
    return pd.concat([kept.astype(new.dtypes.to_dict()), new], ignore_index=True)
