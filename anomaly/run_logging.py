"""Logging a finished scoring run to MLflow without putting its outputs at risk.

By the time a run is logged its scored, rejects and quarantine files are complete and correct.
A tracking store that is busy (SQLite locked by another process) or briefly unreachable must not
turn that into a failed run: logging is retried with backoff, and if the store still refuses,
the run leaves a small JSON record beside its output (``scores.unlogged.json``) holding what the
MLflow run needs, and ends "scored, not logged". ``anomaly log-run OUTPUT`` logs it later from
that record and the output files; the record goes once the run is logged.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from anomaly.errors import DataFileError, NotLoggedError
from anomaly.quarantine import QuarantinedFile, quarantine_path_for
from anomaly.scoring import BatchSummary
from anomaly.streaming import SCORE_SAMPLE_SIZE, StreamResult
from anomaly.tracking import LoadedModel, TrackingConfig, load_registered_detector, log_scoring_run

logger = logging.getLogger(__name__)

# Attempts and first pause of the retries; each attempt on a locked SQLite store itself waits
# up to MLflow's 20 s busy timeout, so three attempts span about a minute.
LOG_ATTEMPTS = 3
FIRST_PAUSE_S = 2.0
RECORD_VERSION = 1


def unlogged_record_path(output: str | os.PathLike[str]) -> Path:
    """The record of a run not yet logged, beside its output: ``scores.unlogged.json``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.unlogged.json")


def is_transient(exc: BaseException) -> bool:
    """Whether a logging failure may pass on its own (a busy or unreachable store), not a bug."""
    if isinstance(exc, (sqlite3.OperationalError, ConnectionError, TimeoutError)):
        return True
    # MLflow, SQLAlchemy and requests wrap the store's own errors; matched by name, so that
    # tracking.py stays the only module that imports mlflow.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"MlflowException", "OperationalError", "RequestException"})


def log_with_retry(
    log: Callable[[], str],
    attempts: int = LOG_ATTEMPTS,
    first_pause_s: float = FIRST_PAUSE_S,
    what: str = "scoring run",
) -> str:
    """Call ``log`` until it returns, pausing ``first_pause_s``, then twice as long, between tries.

    Only transient failures (:func:`is_transient`) are retried; the last one is raised.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    pause = first_pause_s
    for attempt in range(1, attempts + 1):
        try:
            return log()
        except Exception as exc:
            if not is_transient(exc) or attempt == attempts:
                raise
            logger.warning(
                "logging the %s failed (attempt %d of %d: %s); retrying in %.0f s",
                what,
                attempt,
                attempts,
                _first_line(exc),
                pause,
            )
            time.sleep(pause)
            pause *= 2
    raise AssertionError("unreachable")  # pragma: no cover


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@dataclass(frozen=True)
class UnloggedRun:
    """What logging a scored run needs besides its output files, kept until it is logged."""

    model_uri: str  # the exact version, models:/NAME/VERSION
    input: str
    output: str
    rejects: str
    quarantine: str | None
    n_rows: int
    n_scored: int
    n_rejected: int
    n_flagged: int
    series_counts: dict[str, int] = field(default_factory=dict)
    quarantined: tuple[QuarantinedFile, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    # Ties the first attempts and a later `log-run` to one MLflow run: a run that did finish
    # before its caller saw an error is found again instead of logged twice.
    key: str = ""
    error: str = ""
    scored_at: str = ""

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the record atomically (temporary + rename), so a later reader sees all or none."""
        target = Path(path)
        body = {"version": RECORD_VERSION, **asdict(self)}
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(body, indent=2))
        os.replace(tmp, target)
        return target

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> UnloggedRun:
        """Read a record written by :meth:`write`, naming the file on any problem."""
        file = Path(path)
        try:
            body: dict[str, Any] = json.loads(file.read_text())
        except FileNotFoundError as exc:
            raise DataFileError(
                f"{file}: no record of an unlogged run (was the run logged already?)",
                source=str(file),
            ) from exc
        except (OSError, ValueError) as exc:
            raise DataFileError(
                f"{file}: not a readable run record ({exc})", source=str(file)
            ) from exc
        if body.pop("version", None) != RECORD_VERSION:
            raise DataFileError(f"{file}: unknown run record version", source=str(file))
        try:
            body["quarantined"] = tuple(QuarantinedFile(**q) for q in body.get("quarantined", ()))
            body["skipped"] = tuple((str(p), str(r)) for p, r in body.get("skipped", ()))
            return cls(**body)
        except TypeError as exc:
            raise DataFileError(f"{file}: not a run record ({exc})", source=str(file)) from exc


def _read_scores(output: Path, expected_rows: int) -> np.ndarray:
    """The scored output's ``anomaly_score`` column (a uniform sample for a large output)."""
    try:
        meta = pq.read_metadata(output)
    except (OSError, ValueError) as exc:
        raise DataFileError(
            f"{output}: scored output not readable ({exc})", source=str(output)
        ) from exc
    if meta.num_rows != expected_rows:
        raise DataFileError(
            f"{output}: holds {meta.num_rows} rows, the run record says {expected_rows} were "
            "scored; the output was replaced since, so this run can no longer be logged",
            source=str(output),
        )
    try:
        scores = pq.read_table(output, columns=["anomaly_score"]).column(0).to_numpy()
    except (OSError, ValueError, KeyError) as exc:
        raise DataFileError(
            f"{output}: no anomaly_score column to log ({exc})", source=str(output)
        ) from exc
    # The same uniform sample size a streamed run logs its histogram and quantiles from.
    if len(scores) > SCORE_SAMPLE_SIZE:
        rng = np.random.default_rng(0)
        scores = np.sort(rng.choice(scores, SCORE_SAMPLE_SIZE, replace=False))
    return np.asarray(scores, dtype=np.float64)


def record_for(
    batch: BatchSummary,
    model: LoadedModel,
    data: str,
    output: str,
    rejects: str,
    skipped: Sequence[tuple[str, str]] = (),
) -> UnloggedRun:
    """The record of ``batch`` as :func:`log_scored` keeps it until the run is logged."""
    return UnloggedRun(
        model_uri=model.model_uri,
        input=data,
        output=output,
        rejects=rejects,
        quarantine=str(quarantine_path_for(output)),
        n_rows=batch.n_rows,
        n_scored=batch.n_scored,
        n_rejected=batch.n_rejected,
        n_flagged=batch.n_flagged,
        series_counts=dict(batch.series_counts),
        quarantined=tuple(batch.quarantined),
        skipped=tuple(skipped),
        key=f"score:{Path(output).resolve()}:{uuid.uuid4().hex}",
        scored_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def log_scored(
    batch: BatchSummary,
    model: LoadedModel,
    data: str,
    output: str,
    rejects: str,
    tracking: TrackingConfig,
    attempts: int = LOG_ATTEMPTS,
    first_pause_s: float = FIRST_PAUSE_S,
    skipped: Sequence[tuple[str, str]] = (),
) -> str:
    """Log a scored run with retries; if the store keeps refusing, keep a record and say so.

    Returns the MLflow run id.

    Raises
    ------
    NotLoggedError
        When every attempt failed on a transient error. The outputs are complete; the error
        names the record that ``anomaly log-run OUTPUT`` logs later.
    """
    record = record_for(batch, model, data, output, rejects, skipped)
    path = unlogged_record_path(output)
    # A record left by an earlier run to this output describes outputs this run has replaced.
    path.unlink(missing_ok=True)

    try:
        return log_with_retry(
            lambda: _log_record(batch, model, record, tracking), attempts, first_pause_s
        )
    except Exception as exc:
        if not is_transient(exc):
            raise
        replace(record, error=_first_line(exc)).write(path)
        raise NotLoggedError(
            f"scored, not logged: the outputs are complete, but the tracking store "
            f"{tracking.tracking_uri} refused the run after {attempts} attempt(s) "
            f"({_first_line(exc)}); log it later with `anomaly log-run {output}`",
            record=str(path),
        ) from exc


def log_unlogged_run(
    output: str | os.PathLike[str], tracking: TrackingConfig, attempts: int = LOG_ATTEMPTS
) -> str:
    """Log the run that scored ``output`` from its record; remove the record; return the run id.

    A run logged already under the record's key is found, not logged twice.
    """
    path = unlogged_record_path(output)
    record = UnloggedRun.read(path)
    batch = StreamResult(
        n_rows=record.n_rows,
        n_scored=record.n_scored,
        n_rejected=record.n_rejected,
        n_flagged=record.n_flagged,
        scores=_read_scores(Path(record.output), record.n_scored),
        output=Path(record.output),
        rejects=Path(record.rejects),
        series_counts=record.series_counts,
        quarantined=record.quarantined,
        quarantine=None if record.quarantine is None else Path(record.quarantine),
    )
    model = load_registered_detector(record.model_uri, tracking, device="cpu")
    run_id = log_with_retry(lambda: _log_record(batch, model, record, tracking), attempts)
    path.unlink(missing_ok=True)
    return run_id


def _log_record(
    batch: BatchSummary, model: LoadedModel, record: UnloggedRun, tracking: TrackingConfig
) -> str:
    """One attempt at logging ``batch`` as the MLflow run ``record`` describes."""
    return log_scoring_run(
        batch,
        model,
        record.input,
        record.output,
        record.rejects,
        tracking,
        idempotency_key=record.key,
        skipped=record.skipped,
    )
