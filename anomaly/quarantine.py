"""Files set aside from a scoring run, each with the reason, so one bad file never stops the rest.

A file is quarantined when the problem is the file's own and would recur on every attempt: it is
not Parquet, it is truncated, it lacks a column the model needs, a column has the wrong type.
Its rows are not scored; the file is left where it is and listed, with the reason and (when its
footer could be read) its row count, in ``NAME.quarantine.parquet`` beside the output, in the
run's MLflow metrics and in the flow's summary. Errors that are not about one file (a full disk,
a bug) still fail the whole run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from anomaly.data.parquet import write_parquet_atomic
from anomaly.errors import AnomalyError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantinedFile:
    """An input file that was not scored, and why."""

    source_file: str
    reason: str
    error: str  # the named error's class, e.g. "SchemaError"
    rows: int | None = None  # rows in the file, when its footer could be read

    @classmethod
    def of(
        cls, source: str | os.PathLike[str], exc: AnomalyError, rows: int | None = None
    ) -> QuarantinedFile:
        """Record ``exc`` for ``source``; the reason drops the file name the message starts with."""
        name = str(source)
        reason = str(exc).removeprefix(f"{name}: ")
        logger.warning("%s: quarantined, not scored: %s", name, reason)
        return cls(source_file=name, reason=reason, error=type(exc).__name__, rows=rows)


def failed_source(exc: BaseException) -> str | None:
    """The file a named error is about, when it names one (``SchemaError`` / ``DataFileError``)."""
    if isinstance(exc, AnomalyError):
        return getattr(exc, "source", None)
    return None


def quarantine_path_for(output: str | os.PathLike[str]) -> Path:
    """The quarantine list beside the output: ``scores.parquet`` -> ``scores.quarantine.parquet``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.quarantine.parquet")


def quarantine_frame(files: Sequence[QuarantinedFile]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source_file": pd.array([f.source_file for f in files], dtype="string"),
            "reason": pd.array([f.reason for f in files], dtype="string"),
            "error": pd.array([f.error for f in files], dtype="string"),
            "rows": pd.array([f.rows for f in files], dtype="Int64"),
        }
    )


def write_quarantine(files: Sequence[QuarantinedFile], path: str | os.PathLike[str]) -> Path:
    """Write the list atomically; an empty list is written too, so a rerun replaces a stale one."""
    return write_parquet_atomic(quarantine_frame(files), path, role="quarantine list")
