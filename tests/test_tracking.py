"""Tracking against a real temporary MLflow SQLite store."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from anomaly import ModelNotFoundError, score_frame
from anomaly.errors import TrackingStoreError
from anomaly.tracking import (
    TrackingConfig,
    configure,
    load_registered_detector,
    log_scoring_run,
    log_training_run,
)


@pytest.fixture
def registered(fitted_detector, normal_table, tracking_config):
    return log_training_run(
        fitted_detector, normal_table, "data/train.parquet", tracking_config, run_name="t1"
    )


def test_training_run_logs_params_metrics_plots_and_dataset(
    registered, fitted_detector, tracking_config
):
    client = MlflowClient(tracking_config.tracking_uri)
    run = client.get_run(registered.run_id)
    assert run.data.params["model"] == "dense"
    assert run.data.params["epochs"] == str(fitted_detector.epochs)
    assert run.data.params["data.source"] == "data/train.parquet"
    assert run.data.metrics["threshold"] == pytest.approx(fitted_detector.threshold_)
    assert run.data.metrics["quantile"] == 0.95
    assert run.data.metrics["calibration_size"] == fitted_detector.fit_info_["n_calibration"]
    assert run.data.metrics["calibration_error_p50"] < run.data.metrics["calibration_error_p99"]
    losses = client.get_metric_history(registered.run_id, "train_loss")
    assert [m.step for m in losses] == list(range(1, len(fitted_detector.history_.train_loss) + 1))
    plots = {a.path for a in client.list_artifacts(registered.run_id, "plots")}
    assert plots == {
        "plots/calibration_histogram.png",
        "plots/loss_curves.png",
        "plots/feature_errors.png",
        "plots/latent_pca.png",
    }
    assert (
        run.inputs.dataset_inputs[0].dataset.source.endswith("data/train.parquet")
        or "train.parquet" in run.inputs.dataset_inputs[0].dataset.source
    )


def test_series_and_image_runs_log_a_latent_view_of_their_calibration_data(
    fitted_series_detector, series_table, tracking_config
):
    """Series: the codes of the calibration windows, scored as calibration scored them (the
    summary's share above the threshold is the calibration set's own); images: calibration
    images."""
    from anomaly import AutoencoderDetector
    from anomaly.data.images import ImageBatch
    from anomaly.data.synthetic import make_blob_images

    client = MlflowClient(tracking_config.tracking_uri)
    series = log_training_run(
        fitted_series_detector, series_table, "series.parquet", tracking_config
    )
    assert "plots/latent_pca.png" in {a.path for a in client.list_artifacts(series.run_id, "plots")}
    summary = Path(
        client.download_artifacts(series.run_id, "review/threshold_summary.md")
    ).read_text()
    thr = fitted_series_detector.thresholder_
    n = len(thr.calibration_scores_)
    share = float((thr.calibration_scores_ > thr.threshold_).mean())
    assert (
        f"share above it of the {n} calibration windows in the latent view: {share:.2%}" in summary
    )

    images = make_blob_images(120, (16, 16), seed=1)
    image_model = AutoencoderDetector(
        model="conv", epochs=2, batch_size=32, verbose=False, image_size=(16, 16)
    ).fit(images)
    paths = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(images))]})
    batch = ImageBatch(images, paths, pd.DataFrame({"path": [], "reason": []}))
    imaged = log_training_run(image_model, batch, "images/", tracking_config)
    plots = {a.path for a in client.list_artifacts(imaged.run_id, "plots")}
    assert {"plots/latent_pca.png", "plots/calibration_images.png"} <= plots


def test_model_is_registered_with_tags(registered, fitted_detector, tracking_config):
    client = MlflowClient(tracking_config.tracking_uri)
    version = client.get_model_version("test-detector", registered.version)
    assert registered.version == "1"
    assert float(version.tags["threshold"]) == pytest.approx(fitted_detector.threshold_, rel=1e-5)
    assert version.run_id == registered.run_id


def test_pyfunc_scores_a_dataframe(registered, fitted_detector, incoming_table, tracking_config):
    mlflow.set_tracking_uri(tracking_config.tracking_uri)
    model = mlflow.pyfunc.load_model(registered.model_uri)
    features = incoming_table[fitted_detector.schema_.feature_names]
    out = model.predict(features)
    assert len(out) == len(features)
    np.testing.assert_allclose(
        out["anomaly_score"], fitted_detector.score_samples(features), rtol=1e-6
    )
    assert out["is_anomaly"].dtype == bool


def test_registry_load_is_identical_and_resolves_latest(
    registered, fitted_detector, incoming_table, tracking_config
):
    loaded = load_registered_detector("models:/test-detector/latest", tracking_config)
    assert (loaded.name, loaded.version) == ("test-detector", "1")
    np.testing.assert_array_equal(
        loaded.detector.score_samples(incoming_table), fitted_detector.score_samples(incoming_table)
    )


def test_unknown_model_is_a_named_error(tracking_config):
    configure(tracking_config)  # the store exists, the model does not
    with pytest.raises(ModelNotFoundError, match="models:/nothing/1: not found"):
        load_registered_detector("models:/nothing/1", tracking_config)


def test_loading_from_a_missing_store_never_creates_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = TrackingConfig.load()  # no mlflow.yaml here: the built-in defaults
    with pytest.raises(TrackingStoreError) as error:
        load_registered_detector("models:/anything@champion", config)
    message = str(error.value)
    assert f"no tracking store at sqlite:///{tmp_path / 'mlflow.db'}" in message
    assert f"built-in defaults ({tmp_path / 'mlflow.yaml'} not found)" in message
    assert list(tmp_path.iterdir()) == []


def test_scoring_run_logs_counts(registered, incoming_table, tracking_config):
    loaded = load_registered_detector(registered.model_uri, tracking_config)
    holed = incoming_table.copy()
    holed.loc[0, "rpm"] = np.nan
    batch = score_frame(loaded.detector, holed, loaded.name, loaded.version)
    run_id = log_scoring_run(
        batch, loaded, "in.parquet", "out.parquet", "rej.parquet", tracking_config
    )
    metrics = MlflowClient(tracking_config.tracking_uri).get_run(run_id).data.metrics
    assert metrics["rows_in"] == len(holed)
    assert metrics["rows_rejected"] == 1
    assert metrics["rows_scored"] + metrics["rows_rejected"] == metrics["rows_in"]
    assert metrics["rows_flagged"] == batch.n_flagged
    assert metrics["anomaly_rate"] == pytest.approx(batch.anomaly_rate)


def test_environment_overrides_tracking_uri(tmp_path, monkeypatch):
    config_file = tmp_path / "mlflow.yaml"
    config_file.write_text("tracking_uri: sqlite:///a.db\nexperiment_name: x\n")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Relative SQLite paths are fixed to the current folder when the settings are read.
    assert TrackingConfig.load(config_file).tracking_uri == f"sqlite:///{Path.cwd() / 'a.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///b.db")
    assert TrackingConfig.load(config_file).tracking_uri == f"sqlite:///{Path.cwd() / 'b.db'}"


def test_unknown_keys_in_mlflow_yaml_are_refused(tmp_path):
    config_file = tmp_path / "mlflow.yaml"
    config_file.write_text("tracking_url: sqlite:///a.db\n")
    with pytest.raises(Exception, match="tracking_url"):
        TrackingConfig.load(config_file)


def test_project_mlflow_yaml_parses():
    from pathlib import Path

    config = TrackingConfig.load(Path(__file__).parent.parent / "mlflow.yaml")
    assert config.registered_model_name and config.experiment_name
