"""The project's processes switch vendor telemetry off themselves, not only under the Makefile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flows import PROCESS_DEFAULTS

ROOT = Path(__file__).parents[2]


def _environment_after(statement: str, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in PROCESS_DEFAULTS}
    code = f"{statement}; import json, os; print(json.dumps(dict(os.environ)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_flows_sets_every_default_before_prefect_loads():
    seen = _environment_after("import flows.score")
    for name, value in PROCESS_DEFAULTS.items():
        assert seen[name] == value, name


def test_the_library_alone_turns_mlflow_telemetry_off_and_a_users_choice_wins():
    assert _environment_after("import anomaly")["MLFLOW_DISABLE_TELEMETRY"] == "true"
    chosen = _environment_after("import flows", PREFECT_SERVER_ANALYTICS_ENABLED="true")
    assert chosen["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
