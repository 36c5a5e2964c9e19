"""Prefect flows: orchestration only; every task is one call into the `anomaly` library."""

from __future__ import annotations

import logging
import os
from typing import Any

from anomaly.errors import AnomalyError

# Set before any flow module imports Prefect, so every process of the project (serve, a worker,
# a flow run by hand) gets them, not only those the Makefile starts: the local server's
# telemetry heartbeat locks its SQLite database on a busy machine, and its first start migrates
# that database, which can outlast Prefect's 20 s default. Values already set win.
PROCESS_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}
for _name, _value in PROCESS_DEFAULTS.items():
    os.environ.setdefault(_name, _value)

# Name of the Failed state a scoring run ends in when some input files were quarantined while
# the others were scored: red in the UI and caught by automations on failure, yet named apart
# from a run that produced nothing.
PARTIAL_FAILURE_STATE = "PartialFailure"


class ReportedFailure(Exception):
    """The data of a Failed state a flow returns on purpose, carrying the run's record.

    Prefect resolves a failed state's data into an exception (any other object there is a
    ``TypeError``), and a served run's engine raises it as the run ends and logs it as "Engine
    execution exited with unexpected exception", with a traceback. The failure is already told
    by the state's name and message, so the records carrying it are dropped (see
    :class:`DropReportedFailures`); the state stays Failed in the UI and for automations.
    """

    def __str__(self) -> str:
        return str(self.args[0])


class DropReportedFailures(logging.Filter):
    """Drop the log records whose exception is a :class:`ReportedFailure`."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ReportedFailure)


# The loggers Prefect's engine reports a run's final exception on: the flow run's logger (the
# `python -m prefect.engine` a served deployment runs in; also sent to the API, so the UI) and
# the engine's own (its exit handler). Filters on a logger apply to what it logs itself only.
ENGINE_LOGGERS = ("prefect.flow_runs", "prefect.engine")
for _logger_name in ENGINE_LOGGERS:
    _logger = logging.getLogger(_logger_name)
    if not any(isinstance(f, DropReportedFailures) for f in _logger.filters):
        _logger.addFilter(DropReportedFailures())


def retry_unless_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Retry I/O failures (a file share hiccup, a locked store), not errors that will recur.

    The project's named errors (a schema mismatch, an unknown model, a corrupt file) fail the
    same way every time, so retrying them only delays the report.
    """
    try:
        error = state.result(raise_on_failure=False)
    except Exception:
        return True
    return not isinstance(error, AnomalyError)
