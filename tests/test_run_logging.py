"""A scoring run whose tracking store refuses it keeps its outputs and is logged later."""

from __future__ import annotations

import sqlite3
import threading
import time

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from anomaly.cli import NOT_LOGGED_EXIT, app
from anomaly.data.parquet import write_parquet_atomic
from anomaly.errors import DataFileError
from anomaly.run_logging import UnloggedRun, log_with_retry, unlogged_record_path

runner = CliRunner()


def test_transient_failures_are_retried_until_logging_succeeds():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "run-1"

    assert log_with_retry(flaky, attempts=3, first_pause_s=0) == "run-1"
    assert len(calls) == 3


def test_a_bug_is_not_retried_and_the_last_transient_error_is_raised():
    calls = []

    def broken() -> str:
        calls.append(1)
        raise TypeError("a bug, not a busy store")

    with pytest.raises(TypeError):
        log_with_retry(broken, attempts=3, first_pause_s=0)
    assert len(calls) == 1

    def locked() -> str:
        calls.append(1)
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        log_with_retry(locked, attempts=2, first_pause_s=0)
    assert len(calls) == 3


def test_a_damaged_record_is_named(tmp_path):
    path = tmp_path / "scores.unlogged.json"
    with pytest.raises(DataFileError, match="no record of an unlogged run"):
        UnloggedRun.read(path)
    path.write_text("{not json")
    with pytest.raises(DataFileError, match=r"scores\.unlogged\.json: not a readable run record"):
        UnloggedRun.read(path)


@pytest.fixture
def workdir(tmp_path, monkeypatch, normal_table, incoming_table):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.yaml").write_text(
        "tracking_uri: sqlite:///cli.db\nartifact_location: artifacts\n"
        "experiment_name: cli\nregistered_model_name: cli-model\n"
    )
    write_parquet_atomic(normal_table, tmp_path / "train.parquet")
    write_parquet_atomic(incoming_table.iloc[:400], tmp_path / "incoming" / "b1.parquet")
    write_parquet_atomic(incoming_table.iloc[400:], tmp_path / "incoming" / "b2.parquet")
    trained = runner.invoke(
        app,
        ["train", "train.parquet", "--categorical", "machine_type", "--keys",
         "reading_id,timestamp", "--epochs", "3"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    return tmp_path


def _lock_when_scored(db, output, locked: threading.Event, release: threading.Event):
    """Hold an exclusive lock on the store from the moment the scored output appears."""
    while not output.exists():
        time.sleep(0.005)
    con = sqlite3.connect(db, timeout=60, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    locked.set()
    release.wait(120)
    con.execute("ROLLBACK")
    con.close()


def test_locked_store_ends_scored_not_logged_and_log_run_logs_it_later(workdir, incoming_table):
    output = workdir / "out" / "scores.parquet"
    inputs = {p.name: p.read_bytes() for p in (workdir / "incoming").iterdir()}
    locked, release = threading.Event(), threading.Event()
    holder = threading.Thread(
        target=_lock_when_scored, args=(workdir / "cli.db", output, locked, release)
    )
    holder.start()
    try:
        scored = runner.invoke(
            app, ["score", "incoming", "--output", str(output), "--log-attempts", "1"]
        )
    finally:
        release.set()
        holder.join()
    assert locked.is_set()
    assert scored.exit_code == NOT_LOGGED_EXIT, scored.output
    text = " ".join(scored.output.split())
    assert "scored, not logged" in text and "anomaly log-run" in text
    assert "Traceback" not in scored.output
    # The outputs are complete and the inputs untouched: rows in = scored + rejected.
    out = pd.read_parquet(output)
    rejects = pd.read_parquet(workdir / "out" / "scores.rejects.parquet")
    assert len(out) + len(rejects) == len(incoming_table)
    assert {p.name: p.read_bytes() for p in (workdir / "incoming").iterdir()} == inputs
    record = UnloggedRun.read(unlogged_record_path(output))
    assert (record.n_scored, record.n_rejected) == (len(out), len(rejects))
    assert record.model_uri == "models:/cli-model/1"

    logged = runner.invoke(app, ["log-run", str(output)])
    assert logged.exit_code == 0, logged.output
    assert not unlogged_record_path(output).exists()
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'cli.db'}")
    runs = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("cli").experiment_id],
        filter_string="tags.`anomaly.run_type` = 'scoring' and attributes.status = 'FINISHED'",
    )
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert metrics["rows_scored"] == len(out) and metrics["rows_rejected"] == len(rejects)
    assert metrics["rows_flagged"] == int(out["is_anomaly"].sum())
    assert metrics["score_p50"] == pytest.approx(out["anomaly_score"].median())

    again = runner.invoke(app, ["log-run", str(output)])
    assert again.exit_code == 2 and "was the run logged already" in " ".join(again.output.split())


def test_entries_not_read_are_listed_in_the_summary_and_the_run(workdir):
    incoming = workdir / "incoming"
    (incoming / "notes.csv").write_text("a,b\n1,2\n")
    (incoming / "gone.parquet").symlink_to(workdir / "missing.parquet")
    (incoming / "again.parquet").symlink_to(incoming / "b1.parquet")
    scored = runner.invoke(app, ["score", "incoming", "--output", "out/scores.parquet"])
    assert scored.exit_code == 0, scored.output
    text = " ".join(scored.output.split())
    assert "notes.csv: not a .parquet/.parq/.pq file" in text
    assert "gone.parquet: a symlink whose target does not exist" in text
    assert "again.parquet: the same file as" in text
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'cli.db'}")
    client = MlflowClient()
    run = client.search_runs(
        [client.get_experiment_by_name("cli").experiment_id],
        filter_string="tags.`anomaly.run_type` = 'scoring'",
    )[0]
    assert run.data.metrics["files_skipped"] == 3
    listed = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/skipped_inputs.json")
    assert sorted(e["path"].rsplit("/", 1)[-1] for e in listed["entries"]) == [
        "again.parquet",
        "gone.parquet",
        "notes.csv",
    ]
