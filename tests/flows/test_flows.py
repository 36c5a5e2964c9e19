"""Both flows end to end on one session-scoped Prefect test server and a temporary MLflow store."""

import asyncio

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from anomaly.config import TrainSettings
from anomaly.data.parquet import write_parquet_atomic
from tests.conftest import FAST, KEYS

pytestmark = pytest.mark.slow


def write_tracking_yaml(path, config):
    path.write_text(
        f"tracking_uri: {config.tracking_uri}\nartifact_location: {config.artifact_location}\n"
        f"experiment_name: {config.experiment_name}\nregistered_model_name: {config.registered_model_name}\n"
    )
    return str(path)


async def flow_run_artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_train_and_score_flows(
    prefect_server, tmp_path, tracking_config, normal_table, incoming_table
):
    from flows.score import score_flow
    from flows.train import train_flow

    tracking_yaml = write_tracking_yaml(tmp_path / "mlflow.yaml", tracking_config)
    write_parquet_atomic(normal_table, tmp_path / "train.parquet")
    holed = incoming_table.copy()
    holed.loc[holed.index[:2], "power"] = float("nan")
    write_parquet_atomic(holed, tmp_path / "landing" / "batch.parquet")
    settings = TrainSettings(
        detector={
            **FAST,
            "epochs": 10,
            "categorical_columns": ["machine_type"],
            "key_columns": KEYS,
        }
    )

    train_state = train_flow(
        data=str(tmp_path / "train.parquet"),
        settings=settings,
        tracking_config=tracking_yaml,
        return_state=True,
    )
    assert train_state.is_completed()
    model = train_state.result()
    client = MlflowClient(tracking_config.tracking_uri)
    run = client.get_run(model.run_id)
    assert run.data.params["data.source"].endswith("train.parquet")
    assert {"threshold", "quantile", "calibration_size", "best_val_loss"} <= set(run.data.metrics)
    assert {a.path for a in client.list_artifacts(model.run_id, "plots")} >= {
        "plots/calibration_histogram.png"
    }
    assert client.get_model_version("test-detector", model.version).run_id == model.run_id

    score_state = score_flow(
        data=str(tmp_path / "landing"),
        model_uri=model.model_uri,
        output=str(tmp_path / "out" / "scores.parquet"),
        tracking_config=tracking_yaml,
        return_state=True,
    )
    assert score_state.is_completed()
    result = score_state.result()
    out = pd.read_parquet(result.output)
    rejects = pd.read_parquet(result.rejects)
    assert len(out) + len(rejects) == len(holed)
    assert len(rejects) == 2 and rejects["reason"].str.contains("power").all()
    assert set(out.columns) >= {
        "reading_id",
        "timestamp",
        "anomaly_score",
        "p_value",
        "is_anomaly",
        "threshold",
        "model_version",
        "top_feature",
    }
    assert client.get_run(result.run_id).data.metrics["rows_rejected"] == 2

    artifacts = asyncio.run(flow_run_artifacts(score_state.state_details.flow_run_id))
    assert [a.key for a in artifacts] == ["anomaly-score-summary"]
    assert "rows rejected" in str(artifacts[0].data)
