"""Streaming scoring of time-series files: file by file in order, each in chunks of rows.

A series file is scored chunk by chunk, each chunk with the context of the points before it and
a look-ahead of the points after it: with the default ``point_reduction="mean"`` a point's score
folds every window covering it, including windows that end up to ``window - 1`` points later, so
a chunk scored without its look-ahead would give its last points other scores than the whole file
does. Each series in a chunk gets exactly the ``window - 1`` valid points after the chunk (or all
it has left), and only the chunk's own rows are written. So every row gets the score, reason and
attribution it gets when the whole file is scored at once, and memory is bounded by a chunk.

That holds for files whose rows are in time order within each series with no repeated timestamp,
which is how loggers write them. A file out of order, with repeated timestamps (the duplicate
policy needs all copies of a point together) or in CSV is scored whole, as before, and said so.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly.data.series import (
    SeriesLayout,
    list_series_files,
    read_series_file,
    series_ids,
    time_values,
    update_context,
)
from anomaly.errors import AnomalyError, DataFileError, SchemaError
from anomaly.events import EventSettings, EventTracker
from anomaly.quarantine import QuarantinedFile, write_quarantine
from anomaly.scoring import ScoredBatch, score_frame
from anomaly.series_chunks import (
    SeriesChunk,
    SeriesFilePlan,
    iter_chunks,
    look_ahead_rows,
    plan_series_file,
)
from anomaly.stream_sinks import SCORE_SAMPLE_SIZE, ParquetSink, StreamResult, _ScoreSample

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector

logger = logging.getLogger(__name__)

# 64 Ki rows: a chunk costs about 1.3 KB per row while it is scored (its frame, layout, folds
# and output frames), so 256 Ki-row chunks peaked near 1 GiB with the imports and the model
# (991 MiB on a 1.5 M-point file, against 718 MiB at 64 Ki), while the look-ahead each chunk
# scores twice (window - 1 points per series) stays a small share of 64 Ki.
DEFAULT_SERIES_CHUNK_ROWS = 65_536

# Footer key of the context file holding the event tracker's state: the two move together.
EVENT_STATE_KEY = "anomaly.events"


def events_path_for(output: str | os.PathLike[str]) -> Path:
    """Events of a time-series run, beside the output: ``scores.parquet`` -> ``scores.events.parquet``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.events.parquet")


@dataclass(frozen=True)
class SeriesStreamResult(StreamResult):
    """A time-series run's :class:`StreamResult` plus its events file and counts.

    ``n_events`` counts events that closed in this run (summed over runs, each event once),
    ``n_open_events`` those still open at its end (listed with ``open`` set, closed later).
    ``streamed_files`` / ``whole_files`` count files scored in chunks and files read whole.
    """

    events: Path | None = None
    n_events: int = 0
    n_open_events: int = 0
    streamed_files: int = 0
    whole_files: int = 0


def event_state(context_path: str | os.PathLike[str] | None) -> str | None:
    """The event tracker's state kept in the context file's footer, if any."""
    if context_path is None or not Path(context_path).exists():
        return None
    raw = (pq.read_schema(context_path).metadata or {}).get(EVENT_STATE_KEY.encode())
    return None if raw is None else raw.decode()


# ------------------------------------------------------------------------------------- writing
class _FrameSink:
    """One output written frame by frame through a hidden temporary file, renamed on commit.

    Its types are those pandas gives the whole table: the schema is fixed by the first frame with
    no all-null (untyped) column, earlier frames wait for it, later ones are cast to it.
    """

    def __init__(self, path: Path, role: str):
        self.path, self.role = path, role
        self._waiting: list[pa.Table] = []
        self._sink: ParquetSink | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._sink is None:
            self._waiting.append(table)
            if all(not pa.types.is_null(f.type) for f in table.schema):
                self._open()
            return
        self._write(table)

    def _open(self) -> None:
        schema = pa.unify_schemas([t.schema for t in self._waiting], promote_options="permissive")
        self._sink = ParquetSink(
            self.path, schema.with_metadata(self._waiting[-1].schema.metadata), self.role
        )
        waiting, self._waiting = self._waiting, []
        for table in waiting:
            self._write(table)

    def _write(self, table: pa.Table) -> None:
        assert self._sink is not None
        if not table.num_rows:
            return
        schema = self._sink.schema
        try:
            table = table.select(schema.names).cast(schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, KeyError) as exc:
            raise DataFileError(
                f"{self.path}: a chunk's types differ from the first's ({exc})"
            ) from exc
        self._sink.write(table)

    def commit(self) -> Path:
        if self._sink is None:
            self._open()
        assert self._sink is not None
        return self._sink.commit()

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


@dataclass
class _Totals:
    """Where a run's pieces go (sinks, event tracker) and what they add up to."""

    tracker: EventTracker
    scored_sink: _FrameSink
    rejects_sink: _FrameSink
    # Closed events go out as they close: their number grows with the input.
    events_sink: _FrameSink
    model_name: str
    model_version: str
    n_scored: int = 0
    n_rejected: int = 0
    n_flagged: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    sample: _ScoreSample = field(default_factory=lambda: _ScoreSample(SCORE_SAMPLE_SIZE))
    n_closed: int = 0
    seen: dict[str, None] = field(default_factory=dict)  # series in order of appearance
    times: np.ndarray | None = None  # empty, of the run's time type

    def add_counts(self, counts: dict[str, int]) -> None:
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)


class _MidFileError(Exception):
    """A file failed after some of its rows were written: the run restarts without it."""

    def __init__(self, plan: SeriesFilePlan, exc: AnomalyError):
        super().__init__(str(exc))
        self.plan, self.exc = plan, exc


# ------------------------------------------------------------------------------------- scoring
def score_series_stream(
    detector: AutoencoderDetector,
    data: str,
    output: Path,
    rejects: Path,
    quarantine: Path,
    context: pd.DataFrame | None,
    state: str | None,
    model_name: str = "",
    model_version: str = "",
    event_settings: EventSettings | None = None,
    chunk_rows: int = DEFAULT_SERIES_CHUNK_ROWS,
) -> tuple[SeriesStreamResult, pd.DataFrame | None, EventTracker]:
    """Score the series files of ``data`` (in name order) into ``output`` / ``rejects`` and find
    their events, continuing from ``context`` and the event tracker ``state``.

    Returns the result (events written beside the output), the context after the last file and
    the tracker; the caller writes the context with the tracker's state once the outputs are in
    place.
    """
    quarantined: list[QuarantinedFile] = []
    plans: list[SeriesFilePlan] = []
    for path in list_series_files(data):
        try:
            plans.append(plan_series_file(detector, path))
        except AnomalyError as exc:
            quarantined.append(QuarantinedFile.of(path, exc))
    while True:
        try:
            return _run(
                detector,
                plans,
                quarantined,
                output,
                rejects,
                quarantine,
                context,
                state,
                model_name,
                model_version,
                event_settings,
                chunk_rows,
            )
        except _MidFileError as failed:
            quarantined.append(
                QuarantinedFile.of(failed.plan.path, failed.exc, failed.plan.num_rows)
            )
            plans.remove(failed.plan)
            logger.warning("scoring the other %d series file(s) again", len(plans))


def _run(
    detector: AutoencoderDetector,
    plans: list[SeriesFilePlan],
    quarantined_before: list[QuarantinedFile],
    output: Path,
    rejects: Path,
    quarantine: Path,
    context: pd.DataFrame | None,
    state: str | None,
    model_name: str,
    model_version: str,
    event_settings: EventSettings | None,
    chunk_rows: int,
) -> tuple[SeriesStreamResult, pd.DataFrame | None, EventTracker]:
    quarantined = list(quarantined_before)
    names = tuple(detector.schema_.feature_names)
    tracker = EventTracker(names, event_settings, state)
    scored_sink, rejects_sink = _FrameSink(output, "scored"), _FrameSink(rejects, "rejects")
    events_sink = _FrameSink(events_path_for(output), "events")
    sinks = (scored_sink, rejects_sink, events_sink)
    totals = _Totals(tracker, scored_sink, rejects_sink, events_sink, model_name, model_version)
    streamed = whole = 0
    try:
        for plan in plans:
            try:
                if plan.whole:
                    context = _score_whole(detector, plan, context, totals)
                    whole += 1
                else:
                    context = _score_chunks(detector, plan, context, totals, chunk_rows)
                    streamed += 1
            except (DataFileError, SchemaError) as exc:
                # Nothing of this file was written (it failed in its first chunk): set it aside
                # and go on from the last good file's points.
                quarantined.append(QuarantinedFile.of(plan.path, exc, plan.num_rows))
        still_open = tracker.open_events(
            list(totals.seen), detector.series_policy_.series_column is None, totals.times
        )
        events_sink.write(still_open)
        rej = rejects_sink.commit()
        out = scored_sink.commit()
        events_file = events_sink.commit()
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    n_open = len(still_open)
    result = SeriesStreamResult(
        n_rows=totals.n_scored + totals.n_rejected,
        n_scored=totals.n_scored,
        n_rejected=totals.n_rejected,
        n_flagged=totals.n_flagged,
        scores=totals.sample.values(),
        output=out,
        rejects=rej,
        series_counts=totals.counts,
        quarantined=tuple(quarantined),
        quarantine=write_quarantine(quarantined, quarantine),
        events=events_file,
        n_events=totals.n_closed,
        n_open_events=n_open,
        streamed_files=streamed,
        whole_files=whole,
    )
    tracker.n_closed, tracker.n_open = totals.n_closed, n_open
    return result, context, tracker


def _write_batch(
    detector: AutoencoderDetector,
    batch: ScoredBatch,
    totals: _Totals,
) -> None:
    """Write a scored piece, feed its points to the event tracker and count it."""
    policy = detector.series_policy_
    scored = batch.scored
    errors = batch.feature_errors
    if errors is None:
        errors = np.zeros((len(scored), len(detector.schema_.feature_names)))
    keep = scored["duplicate_of_row"].isna().to_numpy()  # a merged duplicate counts once
    rows = scored.loc[keep]
    ids = None if policy.series_column is None else rows[policy.series_column].to_numpy()
    times = None if policy.time_column is None else rows[policy.time_column].to_numpy()
    events = totals.tracker.update(
        ids,
        times,
        rows["anomaly_score"].to_numpy(dtype=np.float64),
        rows["p_value"].to_numpy(dtype=np.float64),
        rows["is_anomaly"].to_numpy(dtype=bool),
        np.asarray(errors, dtype=np.float64)[keep],
    )
    closed = events.loc[~events["open"].to_numpy(dtype=bool)]
    if len(closed):
        totals.events_sink.write(closed)
    totals.n_closed += len(closed)
    totals.seen.update(dict.fromkeys(np.asarray(ids).astype(str) if ids is not None else [""]))
    if times is not None:
        totals.times = np.asarray(times)[:0]
    totals.scored_sink.write(scored)
    totals.rejects_sink.write(batch.rejected)
    totals.n_scored += len(scored)
    totals.n_rejected += len(batch.rejected)
    totals.n_flagged += int(scored["is_anomaly"].sum())
    totals.sample.add(scored["anomaly_score"].to_numpy(dtype=np.float64))


def _score_whole(
    detector: AutoencoderDetector,
    plan: SeriesFilePlan,
    context: pd.DataFrame | None,
    totals: _Totals,
) -> pd.DataFrame | None:
    frame = read_series_file(plan.path, detector.time_column)
    plan.num_rows = len(frame)
    logger.info("%s: scored whole (%s)", plan.path, plan.whole)
    batch = score_frame(
        detector,
        frame,
        totals.model_name,
        totals.model_version,
        source=str(plan.path),
        context=context,
    )
    step, _ = detector.context_after(frame, context, str(plan.path))
    _write_batch(detector, batch, totals)
    totals.add_counts(batch.series_counts)
    _log_file(plan.path, batch.n_scored, batch.n_rejected, batch.n_flagged)
    return update_context(context, step, detector.series_policy_)


def _score_chunks(
    detector: AutoencoderDetector,
    plan: SeriesFilePlan,
    context: pd.DataFrame | None,
    totals: _Totals,
    chunk_rows: int,
) -> pd.DataFrame | None:
    """Score one file chunk by chunk, each with its context and look-ahead (see the module)."""
    policy = detector.series_policy_
    need = int(detector.window) - 1  # type: ignore[arg-type]
    source = str(plan.path)
    chunks = iter_chunks(detector, plan, chunk_rows)
    ahead: deque[SeriesChunk] = deque()
    seen_series: dict[Any, None] = {}  # series of the file in order of appearance
    n_scored = n_rejected = n_flagged = 0
    first = True
    start_context = context
    first_time: dict[str, float] = {}  # each series' first point in this file
    while True:
        try:
            core = ahead.popleft() if ahead else next(chunks, None)
            if core is None:
                break
            n_ahead = look_ahead_rows(core, list(ahead), plan, need)
            while n_ahead < 0:
                more = next(chunks, None)
                if more is None:  # pragma: no cover - last_row says more rows follow
                    raise DataFileError(f"{source}: ended before its planned rows", source=source)
                ahead.append(more)
                n_ahead = look_ahead_rows(core, list(ahead), plan, need)
            pieces = [core.frame]
            left = n_ahead
            for chunk in ahead:
                if left <= 0:
                    break
                pieces.append(chunk.frame.iloc[:left])
                left -= len(chunk.frame)
            frame = pd.concat(pieces) if len(pieces) > 1 else core.frame
            batch = score_frame(
                detector,
                frame,
                totals.model_name,
                totals.model_version,
                source=source,
                context=context,
            )
            step, layout = detector.context_after(core.frame, context, source)
        except AnomalyError as exc:
            if first:
                raise
            raise _MidFileError(plan, exc) from exc
        if policy.time_column is not None:
            valid_times = core.times[core.valid]
            for sid, when in zip(core.ids[core.valid].astype(str), valid_times, strict=True):
                first_time.setdefault(sid, float(when))
        start = int(core.frame.index[0])
        batch = _core_part(batch, start, len(core.frame))
        counts = _core_counts(layout, batch, seen_series, core)
        _write_batch(detector, batch, totals)
        totals.add_counts(counts)
        context = update_context(context, step, policy)
        n_scored += batch.n_scored
        n_rejected += batch.n_rejected
        n_flagged += batch.n_flagged
        first = False
    _log_file(plan.path, n_scored, n_rejected, n_flagged)
    return _file_context(start_context, context, seen_series, first_time, policy, need)


def _file_context(
    before: pd.DataFrame | None,
    after: pd.DataFrame | None,
    series: dict[Any, None],
    firsts: dict[str, float],
    policy: Any,
    n: int,
) -> pd.DataFrame | None:
    """The context after a chunked file, as scoring it whole leaves it: per series of the file,
    its last ``n`` points and the last ``n`` context points from before the file (so a rerun of
    the file finds the context it started from), every other series as it was."""
    if after is None or (policy.series_column is None and policy.time_column is None):
        return after
    keys = [policy.series_column] if policy.series_column else []
    ids = series_ids(after, policy)
    mine = np.isin(ids.astype(str), np.asarray([str(s) for s in series], dtype=object))
    newest = after.loc[mine].groupby(ids[mine], sort=False).tail(n) if n else after.iloc[:0]
    parts = []
    if before is not None and len(before):
        b_ids = series_ids(before, policy).astype(str)
        for sid in (str(s) for s in series):
            old = before.loc[b_ids == sid]
            if policy.time_column is not None and len(old):
                t_old = time_values(old, policy.time_column, "context")[0]
                old = old.loc[t_old < firsts.get(sid, np.inf)]
            new = newest.loc[series_ids(newest, policy).astype(str) == sid]
            parts += [old.tail(n), new]
        others = before.loc[~np.isin(b_ids, list(dict.fromkeys(ids[mine].astype(str))))]
        parts.insert(0, others)
    else:
        parts = [newest]
    del keys
    frames = [p for p in parts if len(p)]
    if not frames:
        return after.iloc[:0]
    return pd.concat(frames, ignore_index=True).astype(after.dtypes.to_dict())


def _core_part(batch: ScoredBatch, start: int, n_core: int) -> ScoredBatch:
    """The rows of a chunk's scored batch that belong to the chunk (not its look-ahead), with
    their positions in the file."""
    scored, rejected = batch.scored, batch.rejected
    in_core = scored["source_row"].to_numpy() < n_core
    scored = scored.loc[in_core].reset_index(drop=True)
    scored["source_row"] += start
    dup = scored["duplicate_of_row"]
    scored["duplicate_of_row"] = dup + start  # NA stays NA
    rej_core = rejected["source_row"].to_numpy() < n_core
    rejected = rejected.loc[rej_core].reset_index(drop=True)
    rejected["source_row"] += start
    errors = batch.feature_errors
    return ScoredBatch(
        scored=scored,
        rejected=rejected,
        series_counts=batch.series_counts,
        feature_errors=None if errors is None else errors[in_core],
    )


def _core_counts(
    layout: SeriesLayout, batch: ScoredBatch, seen_series: dict[Any, None], core: SeriesChunk
) -> dict[str, int]:
    """What the series policies did to the chunk's own rows, counted once over the file.

    ``layout`` is the chunk's alone (with its context, without look-ahead): its counts are those
    of the chunk's rows, except that a stretch running on into the look-ahead may look short
    there, and context points count only for series the file had not shown yet.
    """
    counts = dict(layout.counts)
    short = layout.short_rows if layout.short_rows is not None else np.zeros(len(core.ids), bool)
    rejected_rows = batch.rejected["source_row"].to_numpy() - int(core.frame.index[0])
    still_short = np.zeros(len(short), dtype=bool)
    still_short[rejected_rows] = True
    counts["short_stretch_rows"] = int((short & still_short).sum())
    new = [s for s in pd.unique(core.ids[pd.notna(core.ids)]) if s not in seen_series]
    counts["context_points"] = int(
        (layout.is_context & np.isin(layout.series, np.asarray(new, dtype=object))).sum()
    )
    seen_series.update(dict.fromkeys(new))
    return counts


def _log_file(path: Path, n_scored: int, n_rejected: int, n_flagged: int) -> None:
    logger.info("%s: %d scored, %d rejected, %d flagged", path, n_scored, n_rejected, n_flagged)
