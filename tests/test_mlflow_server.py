"""End to end against a real `mlflow server` on loopback: train, promote, score, read back over HTTP."""

import socket
import subprocess
import sys
import time
import urllib.request

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from anomaly.config import TrainSettings
from anomaly.data.parquet import write_parquet_atomic
from anomaly.pipeline import score, train
from anomaly.tracking import TrackingConfig
from tests.conftest import FAST, KEYS

pytestmark = pytest.mark.slow


@pytest.fixture
def mlflow_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError("mlflow server exited") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not start in 120 s")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_train_promote_score_and_read_back_over_http(
    mlflow_server, tmp_path, monkeypatch, normal_table, incoming_table
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = TrackingConfig(
        tracking_uri=mlflow_server,
        artifact_location=None,
        experiment_name="server-test",
        registered_model_name="served-detector",
    )
    write_parquet_atomic(normal_table, tmp_path / "train.parquet")
    write_parquet_atomic(incoming_table, tmp_path / "incoming" / "batch.parquet")
    settings = TrainSettings(
        detector={
            **FAST,
            "epochs": 15,
            "categorical_columns": ["machine_type"],
            "key_columns": KEYS,
        }
    )
    trained = train(str(tmp_path / "train.parquet"), settings, tracking)
    assert trained.gate is not None and trained.gate.passed, trained.gate
    result = score(
        str(tmp_path / "incoming"),
        tracking.champion_model_uri,
        str(tmp_path / "out" / "scores.parquet"),
        tracking,
    )
    assert result.model_version == trained.model.version
    assert len(pd.read_parquet(result.output)) + result.rows_rejected == len(incoming_table)

    client = MlflowClient(mlflow_server)
    assert client.get_model_version_by_alias("served-detector", "champion").version == "1"
    version = client.get_model_version("served-detector", "1")
    assert version.tags["gate.passed"] == "true" and version.tags["data_digest"]
    run_artifacts = {a.path for a in client.list_artifacts(trained.model.run_id, "plots")}
    assert "plots/latent_pca.png" in run_artifacts
    summary = client.download_artifacts(
        trained.model.run_id, "review/threshold_summary.md", str(tmp_path)
    )
    assert "Threshold review" in open(summary).read()
    scoring = client.get_run(result.run_id)
    assert scoring.data.metrics["rows_scored"] == result.rows_scored
