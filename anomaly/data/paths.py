"""Which files a run reads, and where it may write: the two questions that can lose data.

Inputs: a file, a directory (searched recursively) or a glob expands into the files to read,
and every entry passed over is kept with its reason (a hidden temporary, a dangling link, the
same file reached twice through a link, another run's output), so nothing is skipped silently.

Outputs: every path a run writes is resolved (links followed) and checked, before anything is
written, against every input and every other output. Outputs are marked as such (a key in the
Parquet footer, a marker file in a heat-map folder), so an output left inside an input folder is
never read back as input by a later run, and overwriting it there is not a clash.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from anomaly.errors import DataFileError, OutputPathError

logger = logging.getLogger(__name__)

# Footer key that marks a Parquet file as written by a run; its value is the output's role.
OUTPUT_KEY = b"anomaly.output"
# A folder of files a run wrote (heat maps) holds this marker file.
OUTPUT_FOLDER_MARKER = ".anomaly-output"
# Spellings of Parquet file names in common use (Spark, DuckDB and hand-named files).
PARQUET_SUFFIXES: tuple[str, ...] = (".parquet", ".parq", ".pq")


@dataclass(frozen=True)
class Skipped:
    """An entry of an input directory or glob that is not read, and why."""

    path: Path
    reason: str


@dataclass(frozen=True)
class Listing:
    """The files a source expands to, in sorted order, and the entries passed over."""

    files: tuple[Path, ...]
    skipped: tuple[Skipped, ...] = ()

    def log_skipped(self, source: str) -> None:
        for entry in self.skipped:
            logger.warning("%s: not read: %s (%s)", source, entry.path, entry.reason)


def mark_output(table: pa.Table, role: str) -> pa.Table:
    """``table`` with the footer key saying it is a run's ``role`` output ("scored", "rejects" ...)."""
    return table.replace_schema_metadata(
        {**(table.schema.metadata or {}), OUTPUT_KEY: role.encode()}
    )


def mark_output_schema(schema: pa.Schema, role: str) -> pa.Schema:
    """:func:`mark_output` for a schema (streaming writers open the file with one)."""
    return schema.with_metadata({**(schema.metadata or {}), OUTPUT_KEY: role.encode()})


def mark_output_folder(folder: str | os.PathLike[str]) -> None:
    """Create ``folder`` and mark it as written by a run, so input listings pass over it."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / OUTPUT_FOLDER_MARKER).touch()


def output_role(path: str | os.PathLike[str]) -> str | None:
    """The role of a run's output stored in ``path``'s footer, or None for any other file.

    Only Parquet footers are read (a few KB); a file that is not Parquet, or not readable, is
    no output of ours.
    """
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError):
        return None
    role = metadata.get(OUTPUT_KEY)
    return None if role is None else role.decode(errors="replace")


def _in_output_folder(path: Path, root: Path) -> bool:
    for parent in path.parents:
        if (parent / OUTPUT_FOLDER_MARKER).exists():
            return True
        if parent == root:
            return False
    return False


def _candidates(source: str) -> tuple[list[Path], Path | None]:
    """Entries of ``source`` before filtering, and the directory they were found under."""
    if not source.strip():
        raise DataFileError("DATA is empty: give a file, a directory or a glob")
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if not p.is_dir() or p.is_symlink()), path
    if path.is_file():
        return [path], None
    if glob.has_magic(source):
        matches = (Path(p) for p in glob.glob(source, recursive=True))
        return sorted(p for p in matches if not p.is_dir() or p.is_symlink()), None
    if path.is_symlink():
        raise DataFileError(f"{source}: a symlink whose target does not exist")
    raise DataFileError(
        f"{source}: no such file or directory (expected a file, a directory or a glob)"
    )


def list_inputs(
    source: str | os.PathLike[str], suffixes: Iterable[str], *, skip_outputs: bool = True
) -> Listing:
    """Expand ``source`` into the files whose suffix (any case) is one of ``suffixes``.

    A single file named directly is read whatever its name. Within a directory or a glob:
    hidden entries (temporaries and locks start with a dot), entries with another suffix,
    dangling links, entries that are not regular files, a second link to a file already listed,
    and (with ``skip_outputs``) outputs of earlier runs are passed over with their reason.

    Raises
    ------
    DataFileError
        If ``source`` is empty or names nothing.
    """
    text = os.fspath(source)
    entries, root = _candidates(text)
    if root is None and len(entries) == 1 and not glob.has_magic(text):
        return Listing((entries[0],))
    wanted = tuple(s.lower() for s in suffixes)
    files: list[Path] = []
    skipped: list[Skipped] = []
    seen: dict[Path, Path] = {}
    # Files themselves before links to them: of a file and a link to it, the file is the one read.
    for entry in sorted(entries, key=lambda e: (e.is_symlink(), e)):
        relative = entry.relative_to(root) if root is not None else Path(entry.name)
        if any(part.startswith(".") for part in relative.parts):
            skipped.append(Skipped(entry, "hidden (a temporary, lock or marker file)"))
            continue
        if entry.suffix.lower() not in wanted:
            skipped.append(Skipped(entry, f"not a {'/'.join(wanted)} file"))
            continue
        try:
            target = entry.resolve(strict=True)
            mode = target.stat().st_mode
        except (OSError, RuntimeError):
            skipped.append(Skipped(entry, "a symlink whose target does not exist"))
            continue
        if not stat.S_ISREG(mode):
            skipped.append(Skipped(entry, "not a regular file"))
            continue
        if target in seen:
            skipped.append(Skipped(entry, f"the same file as {seen[target]}"))
            continue
        if skip_outputs and root is not None and _in_output_folder(entry, root):
            skipped.append(Skipped(entry, "in a folder an earlier run wrote"))
            continue
        role = (
            output_role(target)
            if skip_outputs and target.suffix.lower() in PARQUET_SUFFIXES
            else None
        )
        if role is not None:
            skipped.append(Skipped(entry, f"the {role} output of an earlier run"))
            continue
        seen[target] = entry
        files.append(entry)
    return Listing(tuple(sorted(files)), tuple(sorted(skipped, key=lambda s: s.path)))


def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _input_files(source: str) -> list[Path]:
    """Every regular file the source covers, whatever its name, except earlier runs' outputs.

    Wider than what a run reads: an output must not overwrite a user's file in the input
    folder even when the run would not read it (a CSV beside the Parquet files, say).
    """
    try:
        entries, root = _candidates(source)
    except DataFileError:
        return []
    if root is None and len(entries) == 1 and not glob.has_magic(source):
        return [entries[0].resolve()]  # named directly: an input whatever wrote it
    files = []
    for entry in entries:
        try:
            target = entry.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if root is not None and _in_output_folder(entry, root):
            continue
        if target.is_file() and output_role(target) is None:
            files.append(target)
    return files


def check_output_paths(
    source: str | os.PathLike[str] | None,
    outputs: Mapping[str, str | os.PathLike[str] | None],
    folders: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> None:
    """Refuse, before anything is written, an output that would overwrite an input or another output.

    ``outputs`` maps a role ("output", "rejects", "quarantine list", "context" ...) to a file
    path, ``folders`` a role to a folder the run writes files into (heat maps). Paths are
    resolved with links followed. A clash is an :class:`OutputPathError` naming both paths.
    """
    files = {role: _resolve(p) for role, p in outputs.items() if p is not None}
    dirs = {role: _resolve(p) for role, p in (folders or {}).items() if p is not None}
    inputs = _input_files(os.fspath(source)) if source is not None else []
    for role, path in files.items():
        for item in inputs:
            if path == item:
                raise OutputPathError(
                    f"the {role} path {outputs[role]} is the input file {item}: writing it would "
                    "destroy the input; choose another path"
                )
    roles = list(files)
    for i, first in enumerate(roles):
        for second in roles[i + 1 :]:
            if files[first] == files[second]:
                raise OutputPathError(
                    f"the {first} path {outputs[first]} and the {second} path {outputs[second]} "
                    f"are the same file ({files[first]}); give them different paths"
                )
    for role, folder in dirs.items():
        for item in inputs:
            if item == folder or folder in item.parents:
                raise OutputPathError(
                    f"the {role} folder {folder} holds the input file {item}; choose another folder"
                )
        for other, path in files.items():
            if path == folder or folder in path.parents:
                raise OutputPathError(
                    f"the {other} path {path} lies inside the {role} folder {folder}; choose another path"
                )
