"""Planning a series file for chunked scoring: whether its rows are in time order per series, and
the chunks with the look-ahead each needs (see :mod:`anomaly.stream_series`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly.data.schema import invalid_row_reasons
from anomaly.data.series import series_ids, time_values
from anomaly.errors import DataFileError

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector


# ------------------------------------------------------------------------------------- planning
@dataclass
class SeriesFilePlan:
    """How one series file is scored: in chunks (``last_row`` known) or whole (``whole`` says why)."""

    path: Path
    num_rows: int | None
    # Last row of each series with a usable time: a series that has no rows after a chunk
    # needs no look-ahead there.
    last_row: dict[Any, int] = field(default_factory=dict)
    whole: str = ""
    # Integer columns holding nulls somewhere in the file: pandas reads the whole file's as
    # floats, so every chunk's must be read as floats too.
    nullable_ints: tuple[str, ...] = ()


def plan_series_file(detector: AutoencoderDetector, path: Path) -> SeriesFilePlan:
    """Read the file's series and time columns once and decide whether it can be chunked."""
    if path.suffix.lower() == ".csv":
        return SeriesFilePlan(path, None, whole="CSV is read whole")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise DataFileError(f"{path}: cannot read as Parquet ({exc})", source=str(path)) from exc
    policy = detector.series_policy_
    names = set(parquet.schema_arrow.names)
    keys = policy.key_columns
    if any(k not in names for k in keys):
        return SeriesFilePlan(path, parquet.metadata.num_rows, whole="a key column is missing")
    nullable = _nullable_ints(parquet)
    last_row: dict[Any, int] = {}
    last_time: dict[Any, float] = {}
    first = 0
    if keys:
        for batch in parquet.iter_batches(batch_size=1 << 20, columns=keys):
            frame = batch.to_pandas()
            ids = series_ids(frame, policy)
            times = (
                time_values(frame, policy.time_column, str(path))[0]
                if policy.time_column is not None
                else np.arange(first, first + len(frame), dtype=np.float64)
            )
            usable = np.isfinite(times) & pd.notna(ids)
            rows = np.flatnonzero(usable)
            order = rows[np.argsort(ids[rows].astype(str), kind="stable")]
            s, t = ids[order], times[order]
            starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, int)
            ends = np.r_[starts[1:], len(s)]
            for a, b in zip(starts, ends, strict=True):
                sid, ts = s[a], t[a:b]
                if not (np.all(np.diff(ts) > 0) and ts[0] > last_time.get(sid, -np.inf)):
                    return SeriesFilePlan(
                        path,
                        parquet.metadata.num_rows,
                        whole=f"series {sid!r} is not in strict time order",
                    )
                last_time[sid] = float(ts[-1])
                last_row[sid] = first + int(order[b - 1])
            first += len(frame)
    else:  # one series of positions: always in order
        last_row[ids_single(policy)] = parquet.metadata.num_rows - 1
    return SeriesFilePlan(path, parquet.metadata.num_rows, last_row, nullable_ints=nullable)


def ids_single(policy: Any) -> Any:
    """The id every row of a table without a series column has."""
    return series_ids(pd.DataFrame(index=range(1)), policy)[0]


def _nullable_ints(parquet: pq.ParquetFile) -> tuple[str, ...]:
    schema = parquet.schema_arrow
    out = []
    for i, column in enumerate(schema):
        if not pa.types.is_integer(column.type):
            continue
        nulls = 0
        for g in range(parquet.metadata.num_row_groups):
            stats = parquet.metadata.row_group(g).column(i).statistics
            # Without statistics the file may hold nulls: read the column as pandas would.
            nulls += 1 if stats is None or not stats.has_null_count else stats.null_count
        if nulls:
            out.append(column.name)
    return tuple(out)


# ------------------------------------------------------------------------------------- chunking
@dataclass
class SeriesChunk:
    frame: pd.DataFrame  # index: row positions in the file
    ids: np.ndarray
    valid: np.ndarray  # the row becomes a point (usable time, series id and features)
    times: np.ndarray  # seconds (NaN where unusable); positions without a time column


def iter_chunks(
    detector: AutoencoderDetector, plan: SeriesFilePlan, chunk_rows: int
) -> Iterator[SeriesChunk]:
    policy = detector.series_policy_
    first = 0
    batches = pq.ParquetFile(plan.path).iter_batches(batch_size=chunk_rows)
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise DataFileError(
                f"{plan.path}: cannot read row {first} on ({exc})", source=str(plan.path)
            ) from exc
        if batch is None:
            return
        table = pa.Table.from_batches([batch])
        for name in plan.nullable_ints:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(i).cast(pa.float64()))
        frame = table.to_pandas()
        frame.index = pd.RangeIndex(first, first + len(frame))
        # Checked here, before the validity below reads the features.
        detector.schema_.validate(frame, source=str(plan.path), require_keys=True)
        ids = series_ids(frame, policy)
        if policy.time_column is not None:
            times = time_values(frame, policy.time_column, str(plan.path))[0]
        else:
            times = np.arange(first, first + len(frame), dtype=np.float64)
        valid = pd.notna(ids) & np.isfinite(times)
        if detector.nan_policy == "reject":
            valid &= (invalid_row_reasons(frame, detector.schema_) == "").to_numpy()
        yield SeriesChunk(frame, ids, np.asarray(valid, dtype=bool), times)
        first += len(frame)


def look_ahead_rows(
    core: SeriesChunk, ahead: list[SeriesChunk], plan: SeriesFilePlan, need: int
) -> int:
    """How many rows after ``core`` its series need: ``need`` valid points of each series of the
    core that goes on, or as many as there are; -1 when ``ahead`` does not hold them yet."""
    end = int(core.frame.index[-1]) + 1
    wanted = {
        sid
        for sid in pd.unique(core.ids[core.valid])
        if plan.last_row.get(sid, -1) >= end and need > 0
    }
    if not wanted:
        return 0
    ids = np.concatenate([c.ids for c in ahead]) if ahead else np.zeros(0, dtype=object)
    valid = np.concatenate([c.valid for c in ahead]) if ahead else np.zeros(0, dtype=bool)
    rows = np.flatnonzero(valid & pd.Series(ids).isin(wanted).to_numpy())
    seen = pd.Series(ids[rows]).groupby(ids[rows], sort=False).cumcount().to_numpy()
    last = end - 1
    for sid in wanted:
        mine = rows[(ids[rows] == sid) & (seen < need)]
        if len(mine) == need:
            last = max(last, end + int(mine[-1]))
        elif plan.last_row[sid] >= end + len(ids):
            return -1  # the series goes on past what has been read
        elif len(mine):
            last = max(last, end + int(mine[-1]))
    return last - end + 1
