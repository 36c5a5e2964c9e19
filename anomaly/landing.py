"""A landing folder scored file by file, each file exactly once, with a ledger in the output folder.

New Parquet files arrive in a landing folder; each run scores the files the ledger does not list
yet, writes ``<name>.<digest>.scores.parquet`` and its rejects file into the output folder, logs the
batch to MLflow with its monitoring figures, and only then records the file in the ledger
(``scored-files.json``, rewritten atomically). A run that fails part way leaves the ledger listing
exactly the files whose outputs are complete, so the next run picks up the rest; a file scored
again after a crash between writing and recording gets the same output names, so nothing is
duplicated. Each file streams through the same path as ``anomaly score``
(:func:`anomaly.file_scoring.score_files_to`), so its size is bounded by disk, not memory.

A file is identified by its path inside the landing folder and the SHA-256 of its content: the same
name arriving again with new content is a new batch. Files still being copied in are skipped until
they are ``min_age_seconds`` old. A file that cannot be scored (not Parquet, truncated, a column
missing) is recorded in the ledger as quarantined, with the reason, and left in place: later runs
skip it until a corrected file (new content) arrives.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anomaly.data.parquet import file_sha256, list_parquet_files, output_lock
from anomaly.data.paths import check_output_paths
from anomaly.errors import DataFileError
from anomaly.file_scoring import score_files_to
from anomaly.monitoring import AlertSettings, BatchReport, monitor_batch
from anomaly.quarantine import QuarantinedFile, quarantine_path_for
from anomaly.run_logging import log_with_retry
from anomaly.stream_series import events_path_for
from anomaly.tracking import LoadedModel, TrackingConfig, log_scoring_run

logger = logging.getLogger(__name__)

LEDGER_NAME = "scored-files.json"


@dataclass(frozen=True)
class LandingFile:
    """A file found in the landing folder: ``name`` is its POSIX path relative to the folder."""

    path: Path
    name: str
    size: int
    mtime_ns: int
    sha256: str

    @property
    def key(self) -> str:
        return f"{self.name}@{self.sha256}"


class Ledger:
    """The record of scored files, kept as JSON in the output folder.

    Parameters
    ----------
    output_dir : path
        Folder holding the ledger and the outputs it points to.
    """

    def __init__(self, output_dir: str | os.PathLike[str]):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LEDGER_NAME
        self.entries: dict[str, dict[str, Any]] = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
            return {e["key"]: e for e in data["files"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise DataFileError(
                f"{self.path}: ledger is not valid (expected JSON with a 'files' list: {exc}); "
                "move it aside to rescore every file in the landing folder"
            ) from exc

    def is_done(self, file: LandingFile) -> bool:
        return file.key in self.entries

    def matches_stat(self, name: str, size: int, mtime_ns: int) -> bool:
        """Whether a recorded file has this name, size and mtime (so its digest need not be read)."""
        return any(
            e["name"] == name and e["size"] == size and e["mtime_ns"] == mtime_ns
            for e in self.entries.values()
        )

    def record(self, file: LandingFile, entry: dict[str, Any]) -> None:
        """Add ``file`` with the details of its scoring and rewrite the ledger atomically."""
        record = {
            "key": file.key,
            "name": file.name,
            "size": file.size,
            "mtime_ns": file.mtime_ns,
            "sha256": file.sha256,
            **entry,
        }
        # Another landing run may have recorded files since this ledger was read: re-read under
        # the ledger's lock and add this entry, so concurrent runs never drop each other's.
        with output_lock(self.path):
            self.entries = self._read() | {file.key: record}
            tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
            try:
                tmp.write_text(json.dumps({"files": list(self.entries.values())}, indent=1))
                os.replace(tmp, self.path)
            finally:
                tmp.unlink(missing_ok=True)


def pending_files(
    landing: str | os.PathLike[str], ledger: Ledger, min_age_seconds: float = 0.0
) -> list[LandingFile]:
    """Parquet files under ``landing`` that the ledger does not list, oldest name first.

    An empty or missing landing folder has nothing pending (a schedule may run before any data
    arrives); files younger than ``min_age_seconds`` are left for a later run.
    """
    root = Path(landing)
    if not root.is_dir():
        logger.info("%s: landing folder does not exist yet; nothing to score", root)
        return []
    try:
        paths = list_parquet_files(root)
    except DataFileError:
        return []
    now = time.time()
    out = []
    for path in paths:
        st = path.stat()
        name = path.relative_to(root).as_posix()
        if now - st.st_mtime < min_age_seconds:
            logger.info("%s: modified %.0f s ago, left for a later run", name, now - st.st_mtime)
            continue
        if ledger.matches_stat(name, st.st_size, st.st_mtime_ns):
            continue
        file = LandingFile(path, name, st.st_size, st.st_mtime_ns, file_sha256(path))
        if not ledger.is_done(file):
            out.append(file)
    return out


def output_paths(output_dir: str | os.PathLike[str], file: LandingFile) -> tuple[Path, Path]:
    """Scores and rejects paths for ``file``: stable for its content, distinct across folders."""
    stem = file.name.removesuffix(".parquet").replace("/", "__")
    base = Path(output_dir) / f"{stem}.{file.sha256[:12]}"
    return base.with_name(base.name + ".scores.parquet"), base.with_name(
        base.name + ".rejects.parquet"
    )


@dataclass(frozen=True)
class FileResult:
    """What scoring one landing file did."""

    file: str
    output: str
    rejects: str
    rows_in: int
    run_id: str
    report: BatchReport | None
    # Why the file was set aside unscored (not Parquet, a column missing ...); None when scored.
    quarantined: str | None = None

    def summary(self) -> dict[str, Any]:
        r = self.report
        if r is None:
            return {"file": self.file, "rows_in": self.rows_in, "quarantined": self.quarantined}
        return {
            "file": self.file,
            "rows_in": self.rows_in,
            "scored": r.rows_scored,
            "rejected": r.rows_rejected,
            "flagged": r.rows_flagged,
            "anomaly_rate": round(r.anomaly_rate, 4),
            "psi": round(r.psi, 4),
            "alert": "; ".join(r.alerts) or "none",
        }


def score_landing_file(
    model: LoadedModel,
    file: LandingFile,
    output_dir: str | os.PathLike[str],
    tracking: TrackingConfig,
    alerts: AlertSettings | None = None,
) -> FileResult:
    """Score one landing file, write its outputs, log the batch with monitoring figures, record it.

    Safe to repeat after a failure at any step: outputs are overwritten under the same names,
    the MLflow run is found again by its key instead of logged twice, and the ledger entry is
    written last.
    """
    ledger = Ledger(output_dir)
    out, rej = output_paths(output_dir, file)
    check_output_paths(file.path, {"output": out, "rejects": rej})
    # Streamed like `anomaly score`: tables by record batch, series in chunks, images a decoded
    # chunk at a time, so a landing file larger than memory is scored in bounded memory.
    batch = score_files_to(model, str(file.path), out, rej)
    # The ledger is this folder's record of set-aside files; the run's own list would only
    # repeat it beside every output.
    quarantine_path_for(out).unlink(missing_ok=True)
    if batch.quarantined:
        for path in (out, rej, events_path_for(out)):
            path.unlink(missing_ok=True)
        return _quarantine(ledger, model, file, batch.quarantined[0])
    thr = model.detector.thresholder_
    report = monitor_batch(
        batch.scores,
        thr.calibration_scores_,
        thr.threshold_,
        thr.q,
        rows_rejected=batch.n_rejected,
        settings=alerts,
        counts=(batch.n_scored, batch.n_flagged),
    )
    # A store busy past the retries fails this file's run before the ledger records it, so the
    # next run scores it again (same outputs) and logs it under the same key.
    run_id = log_with_retry(
        lambda: log_scoring_run(
            batch,
            model,
            str(file.path),
            str(out),
            str(rej),
            tracking,
            run_name=f"score {file.name}",
            report=report,
            idempotency_key=f"landing:{model.model_uri}:{file.key}",
        )
    )
    ledger.record(
        file,
        {
            "model_uri": model.model_uri,
            "model_version": model.version,
            "output": out.name,
            "rejects": rej.name,
            "rows_in": batch.n_rows,
            "rows_scored": batch.n_scored,
            "rows_rejected": batch.n_rejected,
            "rows_flagged": batch.n_flagged,
            "alerts": list(report.alerts),
            "mlflow_run_id": run_id,
            "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    if report.alert:
        logger.warning("%s: ALERT %s", file.name, "; ".join(report.alerts))
    return FileResult(file.name, str(out), str(rej), batch.n_rows, run_id, report)


def _quarantine(
    ledger: Ledger, model: LoadedModel, file: LandingFile, entry: QuarantinedFile
) -> FileResult:
    """Record a file that cannot be scored, so later runs skip it until its content changes."""
    ledger.record(
        file,
        {
            "status": "quarantined",
            "reason": entry.reason,
            "error": entry.error,
            "model_uri": model.model_uri,
            "rows_in": entry.rows,
            "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )
    return FileResult(file.name, "", "", entry.rows or 0, "", None, quarantined=entry.reason)


def result_dict(result: FileResult) -> dict[str, Any]:
    return asdict(result)
