"""Parquet inputs of a streaming run: planned from their footers, then read batch by batch.

Planning reads footers only and sets aside, with a reason, every file that cannot be scored
(not Parquet, a key or feature column missing or of the wrong type, types that do not fit the
earlier files'), so no output is written before the inputs are known to fit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from anomaly.data.parquet import list_parquet_files
from anomaly.data.schema import _NUMERIC_DTYPE_NAMES, ColumnSpec
from anomaly.errors import AnomalyError, DataFileError, SchemaError
from anomaly.quarantine import (
    QuarantinedFile,
)
from anomaly.scoring import check_reject_columns

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector

logger = logging.getLogger(__name__)


# Stream column chunks through a 1 MiB buffer instead of pre-buffering whole row groups: on a
# file with 1 Mi-row groups this reads as fast and holds a quarter of the memory.
# Page checksums are verified where the writer stored them (a corrupt page is then an error
# naming the file, not wrong numbers).
READ_OPTIONS: dict[str, Any] = {
    "pre_buffer": False,
    "buffer_size": 1 << 20,
    "page_checksum_verification": True,
}


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


def iter_source_batches(
    sources: Iterable[ParquetSource], batch_rows: int
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
