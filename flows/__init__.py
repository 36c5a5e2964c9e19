"""Prefect flows: orchestration only; every task is one call into the `anomaly` library."""

from __future__ import annotations

from typing import Any

from anomaly.errors import AnomalyError

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
