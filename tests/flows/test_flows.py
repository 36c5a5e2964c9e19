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

    # A second batch with a file missing a column: that file is quarantined, the rest scored,
    # and the run ends in the named partial-failure state.
    write_parquet_atomic(holed.drop(columns="power"), tmp_path / "landing" / "broken.parquet")
    partial = score_flow(
        data=str(tmp_path / "landing"),
        model_uri=model.model_uri,
        output=str(tmp_path / "out" / "scores.parquet"),
        tracking_config=tracking_yaml,
        return_state=True,
    )
    assert partial.is_failed() and partial.name == "PartialFailure"
    assert "broken.parquet: missing column 'power'" in partial.message
    again = partial.result(raise_on_failure=False).result
    assert (again.rows_scored, again.rows_rejected) == (result.rows_scored, 2)
    assert again.rows_in == len(holed) * 2 and again.rows_quarantined == len(holed)
    listed = pd.read_parquet(again.quarantine)
    assert listed["source_file"].str.endswith("broken.parquet").tolist() == [True]
    metrics = client.get_run(again.run_id).data.metrics
    assert (metrics["files_quarantined"], metrics["rows_quarantined"]) == (1, len(holed))
    artifacts = asyncio.run(flow_run_artifacts(partial.state_details.flow_run_id))
    assert "QUARANTINED" in str(artifacts[0].data) and "rows in quarantined files" in str(
        artifacts[0].data
    )


def test_train_and_score_flows_for_a_time_series(prefect_server, tmp_path, tracking_config):
    """A conv1d model trained on a CSV series; two batches scored by two flow runs continue it."""
    from anomaly.data.synthetic import LABEL_COLUMN, make_series_table
    from flows.score import score_flow
    from flows.train import train_flow

    tracking_yaml = write_tracking_yaml(tmp_path / "mlflow.yaml", tracking_config)
    normal = make_series_table(1200, n_series=2, seed=21)
    normal.to_csv(tmp_path / "normal.csv", index=False)
    incoming = make_series_table(900, n_series=2, anomalies=2, seed=22, start="2024-01-01 00:20:00")
    first, second = (incoming.groupby("machine").nth(s) for s in (slice(0, 450), slice(450, None)))
    settings = TrainSettings(
        detector={
            **FAST,
            "epochs": 8,
            "model": "conv1d",
            "window": 24,
            "time_column": "timestamp",
            "series_column": "machine",
            "key_columns": [LABEL_COLUMN],
        }
    )
    model = train_flow(
        data=str(tmp_path / "normal.csv"), settings=settings, tracking_config=tracking_yaml
    )
    client = MlflowClient(tracking_config.tracking_uri)
    assert {"plots/series_review.png", "plots/latent_pca.png"} <= {
        a.path for a in client.list_artifacts(model.run_id, "plots")
    }

    outputs = []
    for i, batch in enumerate((first, second)):
        write_parquet_atomic(batch, tmp_path / f"landing{i}" / "batch.parquet")
        result = score_flow(
            data=str(tmp_path / f"landing{i}"),
            model_uri=model.model_uri,
            output=str(tmp_path / "out" / f"scores{i}.parquet"),
            tracking_config=tracking_yaml,
        )
        assert result.rows_in == len(batch) == result.rows_scored + result.rows_rejected
        outputs.append(pd.read_parquet(result.output))
    context = pd.read_parquet(tmp_path / "out" / "test-detector.context.parquet")
    assert context.groupby("machine").size().max() <= 2 * 23
    # The second run continued from the first: its rows score as in one run over both batches.
    from anomaly.tracking import load_registered_detector

    detector = load_registered_detector(model.model_uri, tracking_config).detector
    whole = incoming.assign(score=detector.score_samples(incoming))
    second_scores = outputs[1].merge(whole, on=["machine", "timestamp"])
    assert len(second_scores) == len(second)
    pd.testing.assert_series_equal(
        second_scores["anomaly_score"], second_scores["score"], check_names=False, rtol=1e-5
    )
    assert outputs[1]["top_feature"].notna().all()


def test_the_retrain_reuses_the_champions_settings(
    prefect_server, tmp_path, tracking_config, normal_table
):
    """A retrain without settings makes the same kind of model as the champion it would replace."""
    from flows.train import train_flow

    tracking_yaml = write_tracking_yaml(tmp_path / "mlflow.yaml", tracking_config)
    write_parquet_atomic(normal_table, tmp_path / "train.parquet")
    settings = TrainSettings(
        quantile=0.9,
        detector={
            **FAST,
            "epochs": 5,
            "categorical_columns": ["machine_type"],
            "key_columns": KEYS,
        },
    )
    first = train_flow(
        data=str(tmp_path / "train.parquet"), settings=settings, tracking_config=tracking_yaml
    )
    retrained = train_flow(
        data=str(tmp_path / "train.parquet"),
        tracking_config=tracking_yaml,
        reuse_champion_settings=True,
    )
    client = MlflowClient(tracking_config.tracking_uri)
    params = client.get_run(retrained.run_id).data.params
    assert int(retrained.version) == int(first.version) + 1
    assert params["categorical_columns"] == "['machine_type']"
    assert params["key_columns"] == str(KEYS)
    # reading_id is a key, not a feature, exactly as in the champion.
    assert "reading_id" not in params["features"].split(",")
    assert client.get_run(retrained.run_id).data.metrics["quantile"] == 0.9
