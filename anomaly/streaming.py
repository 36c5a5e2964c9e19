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
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anomaly.data.keys import KeyIndex
from anomaly.data.parquet import list_parquet_files, output_write_error
from anomaly.data.paths import mark_output_schema
from anomaly.data.schema import _NUMERIC_DTYPE_NAMES, ColumnSpec
from anomaly.errors import AnomalyError, DataFileError, SchemaError
from anomaly.quarantine import (
    QuarantinedFile,
    failed_source,
    quarantine_path_for,
    write_quarantine,
)
from anomaly.scoring import ScoredBatch, check_reject_columns, duplicate_rows, score_row_arrays

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector
    from anomaly.scoring import ImageReview

logger = logging.getLogger(__name__)

# 64 Ki rows: large enough that per-batch overhead (pandas, sklearn, kernel launches) is small
# against the work, small enough that a few batches in flight stay a few tens of MB.
DEFAULT_BATCH_ROWS = 65_536
# Scores kept for the run summary (quantiles, histogram): all of them up to this many, else a
# uniform sample of this size, so a summary of a billion rows still fits in a few MB.
SCORE_SAMPLE_SIZE = 200_000

# Stream column chunks through a 1 MiB buffer instead of pre-buffering whole row groups: on a
# file with 1 Mi-row groups this reads as fast and holds a quarter of the memory.
# Page checksums are verified where the writer stored them (a corrupt page is then an error
# naming the file, not wrong numbers).
READ_OPTIONS: dict[str, Any] = {
    "pre_buffer": False,
    "buffer_size": 1 << 20,
    "page_checksum_verification": True,
}

_T = TypeVar("_T")


@dataclass(frozen=True)
class ParquetSource:
    """One input file as planned from its footer: schema, row count and row-group sizes."""

    path: Path
    schema: pa.Schema
    num_rows: int
    row_group_rows: tuple[int, ...]
    # Every feature's Parquet type fits its kind, so a batch's pandas dtypes cannot fail the
    # schema check: it is done once, not per batch. (False where a column of another type is
    # accepted only while all null, which depends on each batch's values.)
    types_fit: bool = False
    # (size, mtime_ns) when planned: a file replaced before it is read is caught, not mixed in.
    stat: tuple[int, int] = (0, 0)

    def check_unchanged(self) -> None:
        """Refuse the file if it changed since it was planned (its rows would not add up)."""
        try:
            st = self.path.stat()
        except OSError as exc:
            raise DataFileError(
                f"{self.path}: gone before it was read ({exc})", source=str(self.path)
            ) from exc
        if self.stat != (0, 0) and (st.st_size, st.st_mtime_ns) != self.stat:
            raise DataFileError(
                f"{self.path}: changed while the run was under way (size {self.stat[0]} -> "
                f"{st.st_size} bytes); score it again once it is complete",
                source=str(self.path),
            )


def _input_schema(schema: pa.Schema) -> pa.Schema:
    """The columns a user sees: without pandas index columns and without pandas metadata.

    Dictionary-encoded columns count as their values' type: encoding is a writer's choice
    (pandas categoricals, Spark, DuckDB), so such a file must fit beside one written plainly.
    """
    meta = schema.pandas_metadata or {}
    hidden = {c for c in meta.get("index_columns", []) if isinstance(c, str)}
    return pa.schema(
        [
            f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
            for f in schema
            if f.name not in hidden
        ]
    )


def plan_sources(
    detector: AutoencoderDetector, data: str | os.PathLike[str]
) -> tuple[list[ParquetSource], list[QuarantinedFile]]:
    """Open every Parquet file of ``data`` (file, directory or glob) and check it can be scored.

    Reads footers only. A file that cannot be read as Parquet, lacks a key or feature column,
    has one of the wrong type, has an input column the outputs would overwrite, or has column
    types that do not fit the earlier files', is set aside with its reason, before any output
    is written; the others are returned to be scored.

    Raises
    ------
    DataFileError
        If ``data`` names no Parquet file at all.
    """
    sources: list[ParquetSource] = []
    quarantined: list[QuarantinedFile] = []
    unified: pa.Schema | None = None
    for path in list_parquet_files(data):
        rows = None
        try:
            try:
                st = path.stat()
                meta = pq.ParquetFile(path).metadata
                schema = _input_schema(meta.schema.to_arrow_schema())
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
                raise DataFileError(
                    f"{path}: cannot read as Parquet ({exc})", source=str(path)
                ) from exc
            rows = meta.num_rows
            # Column presence (and, for typed columns, compatibility) on an empty frame; the
            # all-null allowance is checked again on every batch, where it depends on the values.
            detector.schema_.validate(schema.empty_table().to_pandas(), source=str(path))
            types_fit = _check_types(detector, schema, meta, str(path))
            check_reject_columns(schema.names, str(path))
            unified = _unify(unified, schema, path)
        except AnomalyError as exc:
            quarantined.append(QuarantinedFile.of(path, exc, rows))
            continue
        sources.append(
            ParquetSource(
                path=path,
                schema=schema,
                num_rows=meta.num_rows,
                row_group_rows=tuple(
                    meta.row_group(i).num_rows for i in range(meta.num_row_groups)
                ),
                types_fit=types_fit,
                stat=(st.st_size, st.st_mtime_ns),
            )
        )
    return sources, quarantined


def _check_types(
    detector: AutoencoderDetector, schema: pa.Schema, meta: pq.FileMetaData, source: str
) -> bool:
    """Whether every feature's Parquet type fits its kind; refuse one that does not and holds values.

    A column of another type is allowed only while it is all null (a sensor down for the whole
    file reads as a null or text column). The footer's null counts tell, where the writer
    recorded them, so such a file is refused here, whole, before any row is scored; without
    them the check falls to each batch.
    """
    fits = True
    for spec in detector.schema_.features:
        arrow_type = schema.field(spec.name).type
        if _type_fits(spec, arrow_type) or pa.types.is_null(arrow_type):
            continue
        fits = False
        if _holds_values(meta, spec.name):
            raise SchemaError(
                f"column '{spec.name}': expected {spec.kind} ({spec.dtype}), found {arrow_type}",
                column=spec.name,
                source=source,
            )
    return fits


def _holds_values(meta: pq.FileMetaData, name: str) -> bool:
    """True when the footer's statistics show a non-null value in column ``name``."""
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for j in range(row_group.num_columns):
            chunk = row_group.column(j)
            if chunk.path_in_schema != name:
                continue
            stats = chunk.statistics
            if stats is not None and stats.has_null_count and stats.null_count < row_group.num_rows:
                return True
    return False


def _unify(unified: pa.Schema | None, schema: pa.Schema, path: Path) -> pa.Schema:
    """The rejects file holds every input column, so each file's types must fit the earlier ones'."""
    if unified is None:
        return schema
    try:
        return pa.unify_schemas([unified, schema], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataFileError(
            f"{path}: column types do not fit the earlier files' ({exc})", source=str(path)
        ) from exc


def _type_fits(spec: ColumnSpec, arrow_type: pa.DataType) -> bool:
    numeric = pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
    if spec.kind == "numeric":
        return numeric
    textual = (
        pa.types.is_string(arrow_type)
        or pa.types.is_large_string(arrow_type)
        or pa.types.is_dictionary(arrow_type)
        or pa.types.is_boolean(arrow_type)
    )
    return textual or (numeric and spec.dtype in _NUMERIC_DTYPE_NAMES)


def output_schemas(
    detector: AutoencoderDetector, sources: Sequence[ParquetSource]
) -> tuple[pa.Schema, pa.Schema]:
    """Schemas of the scored and the rejects files for these inputs.

    Scored: the key columns (typed as in the first file), then the score columns. Rejects: every
    input column (the files' schemas unified; a column missing from a file is null there), then
    ``reason``, ``source_row``, ``source_file``.
    """
    # With every file quarantined there are no key types to copy: the (empty) key columns
    # are typed null.
    first = sources[0].schema if sources else None
    keys = [
        first.field(k) if first is not None else pa.field(k, pa.null())
        for k in detector.schema_.keys
    ]
    scored = pa.schema(
        [
            *keys,
            pa.field("anomaly_score", pa.float64()),
            pa.field("p_value", pa.float64()),
            pa.field("is_anomaly", pa.bool_()),
            pa.field("threshold", pa.float64()),
            pa.field("model_name", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("top_feature", pa.string()),
            pa.field("top_feature_share", pa.float64()),
            pa.field("out_of_range", pa.string()),
            pa.field("duplicate_of_row", pa.int64()),
            pa.field("source_row", pa.int64()),
            pa.field("source_file", pa.string()),
        ]
    )
    # plan_sources has already set aside files whose types do not unify.
    inputs = (
        pa.unify_schemas([s.schema for s in sources], promote_options="permissive")
        if sources
        else pa.schema([])
    )
    rejects = pa.schema(
        [
            *inputs,
            pa.field("reason", pa.string()),
            pa.field("source_row", pa.int64()),
            pa.field("source_file", pa.string()),
        ]
    )
    return scored, rejects


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


def conform(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types (missing columns null)."""
    if table.schema.equals(schema):
        return table
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    try:
        return pa.Table.from_arrays(columns, names=schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise DataFileError(
            f"{source}: columns do not match the earlier files' types {schema} ({exc})",
            source=source,
        ) from exc


class _ParquetSink:
    """One output file written batch by batch to a hidden temporary file, renamed on commit."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        role: str,
        use_dictionary: bool | list[str] = True,
    ):
        self.path = path
        self.schema = schema
        self.tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(
                self.tmp, mark_output_schema(schema, role), use_dictionary=use_dictionary
            )
        except OSError as exc:
            raise output_write_error(path, exc) from exc

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            try:
                self.writer.write_table(table)
            except OSError as exc:
                raise output_write_error(self.path, exc) from exc

    def commit(self) -> Path:
        try:
            self.writer.close()
            with open(self.tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise output_write_error(self.path, exc) from exc
        return self.path

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            self.tmp.unlink(missing_ok=True)


@dataclass
class _ScoreSample:
    """A uniform sample of at most ``size`` scores (all of them while fewer), in constant memory.

    Each score draws a random key and the ``size`` smallest keys are kept (bottom-k sampling);
    pruning waits until twice the size has accumulated, so its cost per score is constant.
    """

    size: int
    seed: int = 0
    _keys: list[np.ndarray] = field(default_factory=list)
    _values: list[np.ndarray] = field(default_factory=list)
    _held: int = 0

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def add(self, scores: np.ndarray) -> None:
        if not len(scores):
            return
        self._keys.append(self._rng.random(len(scores)))
        self._values.append(np.asarray(scores, dtype=np.float64))
        self._held += len(scores)
        if self._held > 2 * self.size:
            self._prune()

    def _prune(self) -> None:
        if not self._keys:
            return
        keys, values = np.concatenate(self._keys), np.concatenate(self._values)
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size)[: self.size]
            keys, values = keys[keep], values[keep]
        self._keys, self._values, self._held = [keys], [values], len(keys)

    def values(self) -> np.ndarray:
        self._prune()
        return self._values[0] if self._values else np.array([], dtype=np.float64)


@dataclass(frozen=True)
class StreamResult:
    """What a streamed scoring run wrote: counts, a sample of the scores and the two files."""

    n_rows: int
    n_scored: int
    n_rejected: int
    n_flagged: int
    scores: np.ndarray  # all scores, or a uniform sample of SCORE_SAMPLE_SIZE of them
    output: Path
    rejects: Path
    series_counts: dict[str, int] = field(default_factory=dict)
    # Image batches only: the top-scoring images for the scoring run's review plot.
    images: ImageReview | None = None
    # Input files set aside whole, and the file listing them (written even when empty).
    quarantined: tuple[QuarantinedFile, ...] = ()
    quarantine: Path | None = None

    @property
    def anomaly_rate(self) -> float:
        return self.n_flagged / self.n_scored if self.n_scored else 0.0

    @property
    def n_quarantined_rows(self) -> int:
        """Rows in quarantined files whose row count could be read."""
        return sum(f.rows or 0 for f in self.quarantined)

    @classmethod
    def of_batch(
        cls, batch: ScoredBatch, output: Path, rejects: Path, quarantine: Path | None = None
    ) -> StreamResult:
        """The same summary for a batch scored in memory and written whole."""
        return cls(
            n_rows=batch.n_rows,
            n_scored=batch.n_scored,
            n_rejected=batch.n_rejected,
            n_flagged=batch.n_flagged,
            scores=batch.scores,
            output=output,
            rejects=rejects,
            series_counts=dict(batch.series_counts),
            images=batch.images,
            quarantined=batch.quarantined,
            quarantine=quarantine,
        )


class ScoredWriter:
    """Appends scored and rejected tables, in order, to the two output files; counts as it goes.

    Use as a context manager: leaving it with an exception removes both temporary files, and
    neither output is touched.
    """

    def __init__(
        self,
        output: Path,
        rejects: Path,
        scored_schema: pa.Schema,
        rejects_schema: pa.Schema,
        expected_rows: int,
    ):
        if rejects.resolve() == output.resolve():
            raise ValueError(
                f"rejects and output are the same file ({output}); give them different paths"
            )
        self.expected_rows = expected_rows
        # Dictionary-encode only the repetitive text columns: trying it on the float score
        # columns (always unique) doubled the writing time of the scored file.
        text = [f.name for f in scored_schema if pa.types.is_string(f.type)]
        self.scored = _ParquetSink(output, scored_schema, "scored", use_dictionary=text)
        self.rejects = _ParquetSink(rejects, rejects_schema, "rejects")
        self.n_scored = self.n_rejected = self.n_flagged = 0
        self.sample = _ScoreSample(SCORE_SAMPLE_SIZE)
        # Duplicate keys are found here, where every file's scored rows pass in order, so a
        # single process and a Dask cluster write the same column.
        self.keys = list(scored_schema.names[: scored_schema.get_field_index("anomaly_score")])
        self.key_index: tuple[str, KeyIndex] | None = None

    def __enter__(self) -> ScoredWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.scored.abort()
            self.rejects.abort()

    def write(self, scored: pa.Table, rejected: pa.Table, source: str) -> None:
        if self.key_index is None or self.key_index[0] != source:
            self.key_index = (source, KeyIndex())
        duplicates = duplicate_rows(
            scored.select(self.keys).to_pandas(),
            scored.column("source_row").to_numpy(),
            self.key_index[1],
        )
        scored = scored.append_column(
            "duplicate_of_row", pa.array(duplicates, type=pa.int64(), from_pandas=True)
        )
        self.scored.write(conform(scored, self.scored.schema, source))
        self.rejects.write(conform(rejected, self.rejects.schema, source))
        self.n_scored += scored.num_rows
        self.n_rejected += rejected.num_rows
        self.n_flagged += int(pc.sum(scored.column("is_anomaly")).as_py() or 0)
        self.sample.add(scored.column("anomaly_score").to_numpy())

    def commit(self) -> StreamResult:
        n_rows = self.n_scored + self.n_rejected
        if n_rows != self.expected_rows:  # pragma: no cover - an invariant, not a branch
            raise AssertionError(
                f"rows in {self.expected_rows} != scored {self.n_scored} + rejected {self.n_rejected}"
            )
        # The scored output lands last: once it exists, its rejects file is complete beside it.
        rejects = self.rejects.commit()
        output = self.scored.commit()
        return StreamResult(
            n_rows=n_rows,
            n_scored=self.n_scored,
            n_rejected=self.n_rejected,
            n_flagged=self.n_flagged,
            scores=self.sample.values(),
            output=output,
            rejects=rejects,
        )


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


def iter_source_batches(
    sources: Iterable[ParquetSource], batch_rows: int = DEFAULT_BATCH_ROWS
) -> Iterator[tuple[ParquetSource, int, pa.RecordBatch]]:
    """``(source, first_row, batch)`` for every record batch of every file, in file order."""
    for source in sources:
        first_row = 0
        source.check_unchanged()
        try:
            parquet = pq.ParquetFile(source.path, **READ_OPTIONS)
            if parquet.metadata.num_rows != source.num_rows:
                raise DataFileError(
                    f"{source.path}: changed while the run was under way ({source.num_rows} "
                    f"rows when planned, {parquet.metadata.num_rows} now); score it again once "
                    "it is complete",
                    source=str(source.path),
                )
            for batch in parquet.iter_batches(batch_size=batch_rows):
                yield source, first_row, batch
                first_row += batch.num_rows
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            if isinstance(exc, DataFileError):
                raise
            raise DataFileError(
                f"{source.path}: cannot read as Parquet ({exc})", source=str(source.path)
            ) from exc


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
def _torch_threads(threads: int | None, device: torch.device) -> Iterator[None]:
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
