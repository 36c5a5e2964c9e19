"""Prefect flows: orchestration only; every task is one call into the `anomaly` library."""

from __future__ import annotations

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
