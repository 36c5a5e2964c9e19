"""Streaming scoring of Parquet files in bounded memory.

A file is read record batch by record batch; each batch is validated, preprocessed, scored and
appended to the scored and rejects files. Reading runs ahead in one thread and writing trails in
another (pyarrow and torch release the GIL), so the three overlap, and at any time only a few
batches are in memory whatever the size of the input. The outputs are written to hidden
temporary files and renamed into place only when every row has been accounted for.

Rows, scores and reasons are those of :func:`anomaly.scoring.score_frame` on the whole file;
only the key columns keep their Parquet types exactly (no round trip through pandas).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anomaly.errors import AnomalyError
from anomaly.quarantine import (
    QuarantinedFile,
    failed_source,
    quarantine_path_for,
    write_quarantine,
)
from anomaly.scoring import score_row_arrays
from anomaly.stream_sinks import (
    SCORE_SAMPLE_SIZE,
    ScoredWriter,
    StreamResult,
    _ScoreSample,
    conform,
    output_schemas,
)
from anomaly.stream_sources import (
    READ_OPTIONS,
    ParquetSource,
    iter_source_batches,
    plan_sources,
)

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector

logger = logging.getLogger(__name__)

# Names the rest of the library and its users import from here.
__all__ = [
    "DEFAULT_BATCH_ROWS",
    "READ_OPTIONS",
    "SCORE_SAMPLE_SIZE",
    "ParquetSource",
    "ScoredWriter",
    "StreamResult",
    "_ScoreSample",
    "conform",
    "finish_quarantine",
    "iter_source_batches",
    "output_schemas",
    "plan_sources",
    "prefetch",
    "progress_bar",
    "run_with_quarantine",
    "score_parquet",
    "score_record_batch",
    "torch_threads",
]

# 64 Ki rows: large enough that per-batch overhead (pandas, sklearn, kernel launches) is small
# against the work, small enough that a few batches in flight stay a few tens of MB.
DEFAULT_BATCH_ROWS = 65_536


_T = TypeVar("_T")


def _feature_frame(table: pa.Table, names: list[str]) -> pd.DataFrame:
    """The feature columns as pandas, as ``Table.to_pandas`` converts them, with fewer copies.

    Numeric columns become numpy arrays without consolidating them into one block (the
    preprocessor copies them once, to float64); other columns go through ``to_pandas``.
    """
    data: dict[str, Any] = {}
    for name in names:
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            data[name] = column.to_numpy()
        else:
            data[name] = column.to_pandas()
    return pd.DataFrame(data, copy=False)


def score_record_batch(
    detector: AutoencoderDetector,
    batch: pa.RecordBatch | pa.Table,
    source: str,
    first_row: int,
    model_name: str = "",
    model_version: str = "",
    validate: bool = True,
) -> tuple[pa.Table, pa.Table]:
    """Score one batch of a file whose rows start at ``first_row`` of that file.

    ``validate=False`` skips the schema check, for batches of a file already checked (see
    :attr:`ParquetSource.types_fit`).

    Returns
    -------
    scored, rejected : pyarrow.Table
        Scored rows (keys and score columns) and set-aside rows (every input column plus
        ``reason``, ``source_row``, ``source_file``); together they hold every row of ``batch``.
    """
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    n = table.num_rows
    frame = _feature_frame(table, detector.schema_.feature_names)
    if validate:
        detector.schema_.validate(frame, source=source, require_keys=False)
    rows = score_row_arrays(detector, frame)
    position = np.arange(first_row, first_row + n, dtype=np.int64)
    n_ok = len(rows.scores)
    keys = table.select(list(detector.schema_.keys))
    if n_ok < n:
        keys = keys.filter(pa.array(rows.ok))
    names = pa.array(rows.feature_names, type=pa.string())
    columns = {
        "anomaly_score": pa.array(rows.scores, type=pa.float64()),
        "p_value": pa.array(rows.p_values, type=pa.float64()),
        "is_anomaly": pa.array(rows.is_anomaly, type=pa.bool_()),
        "threshold": pa.repeat(pa.scalar(detector.threshold_, pa.float64()), n_ok),
        "model_name": pa.repeat(pa.scalar(model_name, pa.string()), n_ok),
        "model_version": pa.repeat(pa.scalar(str(model_version), pa.string()), n_ok),
        # Arrow's take on the short name list instead of n Python strings.
        "top_feature": pc.take(names, pa.array(rows.top_index, type=pa.int64())),
        "top_feature_share": pa.array(rows.top_share, type=pa.float64()),
        "out_of_range": pa.array(rows.out_of_range, type=pa.string()),
        "source_row": pa.array(position[rows.ok] if n_ok < n else position),
        "source_file": pa.repeat(pa.scalar(source, pa.string()), n_ok),
    }
    scored = keys
    for name, values in columns.items():
        scored = scored.append_column(name, values)
    bad = ~rows.ok
    n_bad = n - n_ok
    rejected = table.filter(pa.array(bad)) if n_bad else table.slice(0, 0)
    rejected = (
        rejected.append_column("reason", pa.array(rows.reasons, type=pa.string()))
        .append_column("source_row", pa.array(position[bad]))
        .append_column("source_file", pa.repeat(pa.scalar(source, pa.string()), n_bad))
    )
    return scored, rejected


_END = object()


def prefetch(items: Iterable[_T], depth: int = 2) -> Iterator[_T]:
    """Yield ``items``, produced up to ``depth`` ahead in a background thread."""
    iterator = iter(items)
    with ThreadPoolExecutor(1, thread_name_prefix="anomaly-read") as pool:
        pending: deque[Future[Any]] = deque(pool.submit(next, iterator, _END) for _ in range(depth))
        while pending:
            item = pending.popleft().result()
            if item is _END:
                break
            pending.append(pool.submit(next, iterator, _END))
            yield item


def progress_bar(enabled: bool | None, description: str = "scoring") -> Progress:
    show = sys.stderr.isatty() if enabled is None else enabled
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        disable=not show,
    )


def score_parquet(
    detector: AutoencoderDetector,
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    rejects: str | os.PathLike[str],
    model_name: str = "",
    model_version: str = "",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool | None = None,
    torch_threads: int | None = None,
    quarantine: str | os.PathLike[str] | None = None,
) -> StreamResult:
    """Score every Parquet file of ``data`` (file, directory or glob) into two Parquet files.

    Memory stays bounded by a few record batches of ``batch_rows`` rows whatever the input
    size. Every input row ends up in exactly one of ``output`` (scored) and ``rejects`` (with a
    ``reason``), with its file and position as ``source_file`` / ``source_row``; both files
    appear only when the whole input has been scored. A file that cannot be scored (not
    Parquet, truncated, a column missing or of the wrong type) is quarantined: listed with its
    reason in ``quarantine`` (default :func:`~anomaly.quarantine.quarantine_path_for` the
    output) while the other files are scored.

    Raises
    ------
    DataFileError
        ``data`` names no Parquet file.
    """
    detector._check_fitted()
    sources, quarantined = plan_sources(detector, data)

    def run(remaining: list[ParquetSource]) -> StreamResult:
        scored_schema, rejects_schema = output_schemas(detector, remaining)
        return _score_sources(
            detector,
            remaining,
            Path(output),
            Path(rejects),
            scored_schema,
            rejects_schema,
            sum(s.num_rows for s in remaining),
            model_name,
            model_version,
            batch_rows,
            progress,
        )

    with _torch_threads(torch_threads, detector.device_):
        result = run_with_quarantine(run, sources, quarantined)
    return finish_quarantine(result, quarantined, quarantine or quarantine_path_for(output))


def run_with_quarantine(
    run: Callable[[list[ParquetSource]], StreamResult],
    sources: list[ParquetSource],
    quarantined: list[QuarantinedFile],
) -> StreamResult:
    """``run(sources)``; when it fails part way on one file's bad data, set that file aside and run
    again over the others.

    A failed attempt leaves no output (its temporary files are removed), so the files written
    hold whole files only. Such failures (a corrupt row group, a value of the wrong type deep in
    a file) are rare, so redoing the work is cheaper than staging every file's output apart.
    """
    remaining = list(sources)
    while True:
        try:
            return run(remaining)
        except AnomalyError as exc:
            name = failed_source(exc)
            bad = next((s for s in remaining if str(s.path) == name), None)
            if bad is None:
                raise
            quarantined.append(QuarantinedFile.of(bad.path, exc, bad.num_rows))
            remaining.remove(bad)
            logger.warning("scoring the other %d file(s) again without %s", len(remaining), name)


def finish_quarantine(
    result: StreamResult, quarantined: list[QuarantinedFile], path: str | os.PathLike[str]
) -> StreamResult:
    """Write the quarantine list beside the outputs and attach it to ``result``."""
    return replace(
        result, quarantined=tuple(quarantined), quarantine=write_quarantine(quarantined, path)
    )


@contextlib.contextmanager
def torch_threads(threads: int | None, device: torch.device) -> Iterator[None]:
    """Run the forward pass on ``threads`` CPU threads (default: all cores but one).

    The spare core reads and writes. Without it, torch's OpenMP threads and the reader contend
    for the cores, and OpenMP threads that lose their core stall each other at every barrier.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    wanted = threads or max(1, min(before, (os.cpu_count() or 2) - 1))
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# The name the table path and its callers used before images shared it.
_torch_threads = torch_threads


def _score_sources(
    detector: AutoencoderDetector,
    sources: list[ParquetSource],
    output: Path,
    rejects: Path,
    scored_schema: pa.Schema,
    rejects_schema: pa.Schema,
    total: int,
    model_name: str,
    model_version: str,
    batch_rows: int,
    progress: bool | None,
) -> StreamResult:
    per_file: dict[Path, list[int]] = {s.path: [0, 0, 0] for s in sources}
    with (
        ScoredWriter(output, rejects, scored_schema, rejects_schema, total) as sink,
        ThreadPoolExecutor(1, thread_name_prefix="anomaly-write") as writer,
        progress_bar(progress) as bar,
    ):
        task = bar.add_task("score", total=total)
        # At most two writes queued behind the scorer: enough to overlap, little memory held.
        writes: deque[Future[None]] = deque()
        for source, first_row, batch in prefetch(iter_source_batches(sources, batch_rows)):
            scored, rejected = score_record_batch(
                detector,
                batch,
                str(source.path),
                first_row,
                model_name,
                model_version,
                validate=first_row == 0 or not source.types_fit,
            )
            counts = per_file[source.path]
            counts[0] += scored.num_rows
            counts[1] += rejected.num_rows
            counts[2] += int(pc.sum(scored.column("is_anomaly")).as_py() or 0)
            while len(writes) >= 2:
                writes.popleft().result()
            writes.append(writer.submit(sink.write, scored, rejected, str(source.path)))
            bar.advance(task, batch.num_rows)
        while writes:
            writes.popleft().result()
        result = sink.commit()
    for path, (n_scored, n_rejected, n_flagged) in per_file.items():
        logger.info("%s: %d scored, %d rejected, %d flagged", path, n_scored, n_rejected, n_flagged)
    return result
