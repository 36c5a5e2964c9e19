"""`anomaly serve` as a user starts it: no Prefect API set, a champion model, a landing folder.

One process, run as a subprocess: it starts its own Prefect server, registers the deployments,
scores what is waiting (one good file, one broken), ends that run PartialFailure without a
traceback, runs a scoring run started from the Prefect CLI against its deployment, and stops on
SIGTERM taking its server with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from anomaly.data.parquet import write_parquet_atomic
from anomaly.data.synthetic import make_sensor_table
from anomaly.landing import LEDGER_NAME
from anomaly.monitoring import GateResult
from anomaly.tracking import log_training_run, promote
from tests.flows.test_flows import write_tracking_yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
# Start to both files in the ledger: the local server's first start migrates its database, and
# the run's engine process imports torch, MLflow and the model on a loaded 2-core machine.
SCORED_WITHIN_S = 240
STOPPED_WITHIN_S = 30
# A triggered run waits for the runner's next poll (10 s), then starts its own engine process.
TRIGGERED_WITHIN_S = 120


def _ledger(output_dir: Path) -> dict[str, dict]:
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        entries = json.loads((output_dir / LEDGER_NAME).read_text())["files"]
        return {entry["name"]: entry for entry in entries}
    return {}


def _serve_environment(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env | {
        # A home of its own: no profile, database or API URL of the user's or another test's.
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "400",  # rich wraps log lines at 80 columns off a terminal
    }


def test_serve_scores_a_landing_folder_and_stops_on_sigterm(
    tmp_path, tracking_config, fitted_detector, normal_table
):
    model = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    promote(model, GateResult("passed", True, 100, 5, 0.05, 0.05, 0.01, 0.1, 0.99), tracking_config)
    tracking_yaml = write_tracking_yaml(tmp_path / "mlflow.yaml", tracking_config)
    landing, out = tmp_path / "landing", tmp_path / "out"
    good = make_sensor_table(400, anomaly_fraction=0.02, seed=501, first_id=0)
    write_parquet_atomic(good, landing / "good.parquet")
    (landing / "broken.parquet").write_bytes(b"half a file")
    # Files just written count as still arriving for 30 s by default; the retrain waits for
    # its cron (New Year's midnight: never during a test run).
    config = tmp_path / "serve.yaml"
    config.write_text("min_age_seconds: 0\ntrain_cron: '0 0 1 1 *'\n")

    command = [sys.executable, "-m", "anomaly.cli", "serve", "--config", str(config)]
    command += ["--landing", str(landing), "--output-dir", str(out)]
    command += ["--tracking-config", tracking_yaml]
    log_path = tmp_path / "serve.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=_serve_environment(tmp_path), stdout=log, stderr=log
        )
    try:
        first_scored_s = None
        while time.monotonic() - started < SCORED_WITHIN_S and process.poll() is None:
            if first_scored_s is None and list(out.glob("*.scores.parquet")):
                first_scored_s = time.monotonic() - started
            if set(_ledger(out)) == {"good.parquet", "broken.parquet"}:
                break
            time.sleep(1)
        ledger_s = time.monotonic() - started
        assert process.poll() is None, f"serve exited early:\n{log_path.read_text()}"
        assert set(_ledger(out)) == {"good.parquet", "broken.parquet"}, log_path.read_text()
        # The run's last lines (its final state) come after the ledger is written.
        deadline = time.monotonic() + 30
        while (
            "Finished in state PartialFailure" not in log_path.read_text()
            and time.monotonic() < deadline
        ):
            time.sleep(0.5)

        # A run started from outside (the Prefect CLI here, the UI's "Run" alike) is picked up
        # and run by this serving process: nothing else serves the deployment.
        served_at = re.search(r"started for this process at (\S+)", log_path.read_text())
        assert served_at, log_path.read_text()
        later = make_sensor_table(300, anomaly_fraction=0.02, seed=502, first_id=5000)
        write_parquet_atomic(later, landing / "later.parquet")
        run_deployment = ["deployment", "run", "anomaly-score-landing/score-landing"]
        triggered = subprocess.run(
            [sys.executable, "-m", "prefect", *run_deployment],
            cwd=ROOT,
            env=_serve_environment(tmp_path) | {"PREFECT_API_URL": served_at.group(1)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert triggered.returncode == 0, triggered.stdout + triggered.stderr
        deadline = time.monotonic() + TRIGGERED_WITHIN_S
        while "later.parquet" not in _ledger(out) and time.monotonic() < deadline:
            time.sleep(1)
        assert "later.parquet" in _ledger(out), log_path.read_text()

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        process.wait(timeout=STOPPED_WITHIN_S)
        stop_s = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    print(
        f"\nserve: first scored file {first_scored_s:.0f} s, both files in the ledger "
        f"{ledger_s:.0f} s after start; stopped {stop_s:.1f} s after SIGTERM "
        f"(exit code {process.returncode})"
    )

    assert process.returncode == 0, output  # a stop on SIGTERM is a clean exit
    ledger = _ledger(out)
    assert ledger["broken.parquet"]["status"] == "quarantined"
    assert ledger["broken.parquet"]["reason"].startswith("cannot read as Parquet")
    entry = ledger["good.parquet"]
    scored = pd.read_parquet(out / entry["output"])
    rejected = pd.read_parquet(out / entry["rejects"])
    assert len(scored) + len(rejected) == len(good) == entry["rows_in"]
    assert sorted(scored["reading_id"]) == sorted(good["reading_id"])
    later_entry = ledger["later.parquet"]
    assert later_entry["rows_in"] == len(later) and later_entry["rows_scored"] > 0

    # The run ended PartialFailure, and said so in one line: no traceback anywhere.
    assert "Finished in state PartialFailure(" in output, output
    assert "Traceback" not in output, output
    assert "unexpected exception" not in output.lower(), output

    # It said where it serves and what it watches, and stopped its own server on the way out.
    served = re.search(
        r"Serving on a local Prefect server started for this process at (\S+)", output
    )
    assert served, output
    assert f"Watching landing folder {landing.resolve()}" in output
    assert "Stopped serving" in output
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{served.group(1)}/health", timeout=5)
