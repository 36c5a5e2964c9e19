"""Readers, schemas and sample data: the only code that touches data files."""

from anomaly.data.parquet import list_parquet_files, read_table, write_parquet_atomic
from anomaly.data.schema import ColumnSpec, TableSchema, as_frame, invalid_row_reasons

__all__ = [
    "ColumnSpec",
    "TableSchema",
    "as_frame",
    "invalid_row_reasons",
    "list_parquet_files",
    "read_table",
    "write_parquet_atomic",
]
