"""The scheduled scoring deployment's flow over a landing folder, on the session's Prefect test server."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest

from anomaly.data.parquet import write_parquet_atomic
from anomaly.data.synthetic import make_sensor_table
from anomaly.landing import LEDGER_NAME
from anomaly.monitoring import GateResult
from anomaly.tracking import log_training_run, promote
from tests.flows.test_flows import write_tracking_yaml

pytestmark = pytest.mark.slow


@pytest.fixture
def webhook():
    """A loopback HTTP endpoint that records what a Prefect notification block posts to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()
    thread.join()


def test_landing_files_scored_exactly_once_across_runs_with_alerts(
    prefect_server, tmp_path, tracking_config, fitted_detector, normal_table, webhook
):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    from flows.landing import landing_flow

    model = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    promote(model, GateResult("passed", True, 100, 5, 0.05, 0.05, 0.01, 0.1, 0.99), tracking_config)
    url, received = webhook
    CustomWebhookNotificationBlock(
        name="alerts", url=url, json_data={"text": "{{subject}}: {{body}}"}
    ).save("anomaly-test-alerts", overwrite=True)
    tracking_yaml = write_tracking_yaml(tmp_path / "mlflow.yaml", tracking_config)
    landing, out = tmp_path / "landing", tmp_path / "out"
    params = {
        "landing": str(landing),
        "output_dir": str(out),
        "tracking_config": tracking_yaml,
        "notification_block": "custom-webhook/anomaly-test-alerts",
    }
    tables = {
        "a.parquet": make_sensor_table(400, seed=201, first_id=0),
        "day2/b.parquet": make_sensor_table(400, seed=202, first_id=1000),
    }
    for name, table in tables.items():
        write_parquet_atomic(table, landing / name)

    first = landing_flow(**params, return_state=True)
    assert first.is_completed() and first.name == "Completed"
    assert [f["file"] for f in first.result().scored] == ["a.parquet", "day2/b.parquet"]
    assert first.result().model_uri == "models:/test-detector/1"

    # New files arrive: one normal, one with many anomalies, one that is not Parquet at all.
    tables["c.parquet"] = make_sensor_table(400, seed=203, first_id=2000)
    tables["d.parquet"] = make_sensor_table(400, anomaly_fraction=0.3, seed=204, first_id=3000)
    for name in ("c.parquet", "d.parquet"):
        write_parquet_atomic(tables[name], landing / name)
    (landing / "e.parquet").write_bytes(b"half a file")

    second = landing_flow(**params, return_state=True)
    assert second.is_failed() and second.name == "PartialFailure"
    assert "e.parquet: cannot read as Parquet" in second.message
    ledger = {e["name"]: e for e in json.loads((out / LEDGER_NAME).read_text())["files"]}
    assert sorted(ledger) == ["a.parquet", "c.parquet", "d.parquet", "day2/b.parquet", "e.parquet"]
    # Quarantined in the ledger, so later runs leave it alone until new content arrives.
    assert ledger["e.parquet"]["status"] == "quarantined"
    assert ledger["e.parquet"]["reason"].startswith("cannot read as Parquet")
    assert ledger["d.parquet"]["alerts"] and not ledger["c.parquet"]["alerts"]
    assert "d.parquet: anomaly rate" in second.message
    assert received and "d.parquet" in received[0]["text"]

    # The broken file is replaced; the rerun scores exactly that one and raises no alert.
    tables["e.parquet"] = make_sensor_table(300, seed=205, first_id=4000)
    write_parquet_atomic(tables["e.parquet"], landing / "e.parquet")
    third = landing_flow(**params, return_state=True)
    assert third.is_completed() and third.name == "Completed"
    assert [f["file"] for f in third.result().scored] == ["e.parquet"]

    fourth = landing_flow(**params, return_state=True)
    assert fourth.result().scored == []

    entries = json.loads((out / LEDGER_NAME).read_text())["files"]
    ledger = [e for e in entries if e.get("status") != "quarantined"]
    assert [e["name"] for e in entries if e not in ledger] == ["e.parquet"]
    assert sorted(e["name"] for e in ledger) == sorted(tables)
    for entry in ledger:
        scored = pd.read_parquet(out / entry["output"])
        rejected = pd.read_parquet(out / entry["rejects"])
        source = tables[entry["name"]]
        assert len(scored) + len(rejected) == len(source) == entry["rows_in"]
        assert sorted(scored["reading_id"]) == sorted(source["reading_id"])
        assert (scored["model_version"] == "1").all()
    assert len(list(out.glob("*.scores.parquet"))) == len(tables)


def test_alert_state_name_when_a_batch_is_anomalous(
    prefect_server, tmp_path, tracking_config, fitted_detector, normal_table
):
    from mlflow.tracking import MlflowClient

    from flows.landing import ALERT_STATE, landing_flow

    model = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    promote(model, GateResult("passed", True, 100, 5, 0.05, 0.05, 0.01, 0.1, 0.99), tracking_config)
    landing = tmp_path / "landing"
    write_parquet_atomic(
        make_sensor_table(500, anomaly_fraction=0.3, seed=301), landing / "x.parquet"
    )
    state = landing_flow(
        landing=str(landing),
        output_dir=str(tmp_path / "out"),
        tracking_config=write_tracking_yaml(tmp_path / "mlflow.yaml", tracking_config),
        return_state=True,
    )
    assert state.is_completed() and state.name == ALERT_STATE
    assert "anomaly rate" in state.message
    client = MlflowClient(tracking_config.tracking_uri)
    run_id = (
        state.result().scored
        and json.loads((tmp_path / "out" / LEDGER_NAME).read_text())["files"][0]["mlflow_run_id"]
    )
    run = client.get_run(run_id)
    assert run.data.metrics["alert"] == 1.0 and run.data.metrics["psi"] > 0
    assert run.data.tags["anomaly.alert"].startswith("anomaly rate")
    monitor = client.search_runs(
        [run.info.experiment_id], filter_string="tags.`anomaly.monitor_for` = 'test-detector/1'"
    )
    assert len(monitor) == 1
    assert [m.step for m in client.get_metric_history(monitor[0].info.run_id, "anomaly_rate")] == [
        0
    ]
    assert monitor[0].info.status == "FINISHED"  # not left RUNNING between batches
