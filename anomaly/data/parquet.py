"""Parquet in and out: one file, a directory or a glob in; atomic writes out."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from anomaly.data.paths import PARQUET_SUFFIXES, list_inputs, mark_output
from anomaly.errors import DataFileError, OutputWriteError

logger = logging.getLogger(__name__)


def list_parquet_files(source: str | os.PathLike[str]) -> list[Path]:
    """Expand a Parquet file, a directory (searched recursively) or a glob into sorted file paths.

    Entries passed over (see :func:`anomaly.data.paths.list_inputs`: hidden temporaries,
    dangling links, a second link to one file, outputs of earlier runs) are logged with their
    reason. ``.parquet``, ``.parq`` and ``.pq`` in any case count as Parquet.

    Raises
    ------
    DataFileError
        If nothing matches, naming the source.
    """
    listing = list_inputs(source, PARQUET_SUFFIXES)
    listing.log_skipped(os.fspath(source))
    if not listing.files:
        raise DataFileError(
            f"{os.fspath(source)}: no Parquet files found (looked for {', '.join(PARQUET_SUFFIXES)})"
        )
    return list(listing.files)


def _read_one(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        raise DataFileError(f"{path}: cannot read as Parquet ({exc})") from exc


def read_table(source: str | os.PathLike[str]) -> pd.DataFrame:
    """Read one Parquet file, every ``*.parquet`` under a directory, or a glob, into one DataFrame.

    Files are concatenated in sorted path order; their schemas must unify (same column names,
    compatible types), otherwise the error names the file that does not fit.
    """
    files = list_parquet_files(source)
    tables: list[pa.Table] = []
    for path in files:
        table = _read_one(path)
        if tables:
            # Permissive promotion would fill a column missing from one file with nulls: refuse.
            first, names = set(tables[0].column_names), set(table.column_names)
            if first != names:
                raise DataFileError(
                    f"{path}: columns differ from {files[0]}: missing {sorted(first - names)}, "
                    f"extra {sorted(names - first)}"
                )
            try:
                pa.unify_schemas([tables[0].schema, table.schema], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise DataFileError(f"{path}: columns do not match {files[0]} ({exc})") from exc
        tables.append(table)
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    logger.info(
        "read %d rows x %d columns from %d file(s) at %s",
        table.num_rows,
        table.num_columns,
        len(files),
        source,
    )
    return table.to_pandas()


def write_parquet_atomic(
    frame: pd.DataFrame,
    path: str | os.PathLike[str],
    role: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``frame`` to ``path`` through a temporary file in the same directory, then rename.

    Readers never see a half-written file, and a crash leaves at most a hidden temporary file.
    ``role`` marks the file as a run's output of that role (see :mod:`anomaly.data.paths`), so
    input listings of later runs pass over it. ``metadata`` is added to the file's footer (the
    series context keeps its event state there, so both move in one rename).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_write_error(target, exc) from exc
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if metadata:
            table = table.replace_schema_metadata(
                {
                    **(table.schema.metadata or {}),
                    **{k.encode(): v.encode() for k, v in metadata.items()},
                }
            )
        pq.write_table(table if role is None else mark_output(table, role), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise output_write_error(target, exc) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def output_write_error(path: str | os.PathLike[str], exc: OSError) -> OutputWriteError:
    """An error naming the output ``path``: the OS's own message ("File too large") names none."""
    if isinstance(exc, OutputWriteError):
        return exc
    return OutputWriteError(f"{path}: cannot write this output ({exc}); nothing was replaced")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    """The lock file guarding writes to ``path``: ``.NAME.lock`` beside it."""
    target = Path(path)
    return target.with_name(f".{target.name}.lock")


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files left beside ``path`` by writers that were killed.

    Call only while holding :func:`output_lock` for ``path``: a live writer's temporary file
    has the same name pattern, and the lock is what says no writer is live.
    """
    target = Path(path)
    stale = sorted(target.parent.glob(f".{glob.escape(target.name)}.*.tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
        logger.warning("%s: removed a temporary file left by an interrupted run", tmp)
    return stale


@contextlib.contextmanager
def output_lock(*paths: str | os.PathLike[str] | None) -> Iterator[None]:
    """Hold an exclusive lock on each output path while writing; clear stale temporaries first.

    Two runs writing the same output take turns (the second waits, saying which lock it waits
    for) instead of interleaving; once the lock is held, temporaries left by a killed earlier
    run are removed. Locks are taken in path order so runs sharing several outputs cannot
    deadlock. The lock is an OS file lock (``.NAME.lock`` beside the output), released by the
    kernel if the process dies.
    """
    targets = sorted({Path(p).resolve() for p in paths if p is not None})
    with contextlib.ExitStack() as stack:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(lock_path_for(target))
            try:
                lock.acquire(blocking=False)
            except Timeout:
                logger.info(
                    "%s: another run is writing this output; waiting for its lock %s",
                    target,
                    lock.lock_file,
                )
                lock.acquire()
            stack.callback(lock.release)
            remove_stale_temporaries(target)
        yield
