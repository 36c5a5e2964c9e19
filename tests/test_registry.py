"""Registry operations against a real temporary MLflow store: tags, the promotion gate, threshold changes."""

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from anomaly.cli import app
from anomaly.data.synthetic import make_sensor_table
from anomaly.registry import change_threshold, gate_and_promote
from anomaly.thresholds import QuantileThreshold
from anomaly.tracking import alias_version, load_registered_detector, log_training_run


@pytest.fixture
def client(tracking_config):
    return MlflowClient(tracking_config.tracking_uri)


def test_version_tags_and_threshold_review_artifacts(
    fitted_detector, normal_table, tracking_config, client
):
    model = log_training_run(fitted_detector, normal_table, "data/train.parquet", tracking_config)
    tags = client.get_model_version("test-detector", model.version).tags
    assert tags["data_source"] == "data/train.parquet"
    assert len(tags["data_digest"]) == 16
    assert float(tags["validation_loss"]) == pytest.approx(
        min(fitted_detector.history_.val_loss), rel=1e-4
    )
    assert {"threshold", "quantile", "calibration_size"} <= set(tags)
    review = {a.path for a in client.list_artifacts(model.run_id, "review")}
    assert review >= {"review/threshold_summary.md", "review/threshold_quantiles.json"}
    summary = client.download_artifacts(model.run_id, "review/threshold_summary.md")
    text = open(summary).read()
    assert f"{fitted_detector.threshold_:.6g}" in text and "| 0.999 |" in text
    # Same data in a different row order is a different table; the same table, the same digest.
    again = log_training_run(fitted_detector, normal_table, "other/path.parquet", tracking_config)
    assert (
        client.get_model_version("test-detector", again.version).tags["data_digest"]
        == tags["data_digest"]
    )


def test_gate_moves_champion_only_when_it_passes(
    fitted_detector, normal_table, tracking_config, client
):
    first = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    passed = gate_and_promote(
        first, fitted_detector, make_sensor_table(600, seed=101), tracking_config
    )
    assert passed.passed, passed.reasons
    assert alias_version("test-detector", "champion", tracking_config) == first.version

    second = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    # A hold-out slice that is not like the training data: far more rows above the threshold.
    failed = gate_and_promote(
        second,
        fitted_detector,
        make_sensor_table(600, anomaly_fraction=0.3, seed=102),
        tracking_config,
    )
    assert not failed.passed and failed.false_positive_rate > 0.15
    assert alias_version("test-detector", "champion", tracking_config) == first.version
    tags = client.get_model_version("test-detector", second.version).tags
    assert tags["gate.passed"] == "false" and "excludes the target" in tags["gate.reasons"]
    assert tags["gate.verdict"] == "failed" and tags["gate.promoted"] == "false"
    assert client.get_model_version("test-detector", first.version).tags["gate.passed"] == "true"
    run = client.get_run(second.run_id)
    assert run.data.metrics["gate_passed"] == 0.0
    gate_file = client.download_artifacts(second.run_id, "review/gate.json")
    assert json.load(open(gate_file))["passed"] is False


def test_an_inconclusive_gate_promotes_only_the_first_version_or_when_allowed(
    fitted_detector, normal_table, tracking_config, client
):
    """40 hold-out rows cannot tell a good threshold from a bad one: the champion stays put."""
    from anomaly.monitoring import GateSettings

    small = make_sensor_table(40, seed=103)
    first = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    # No champion yet: the first version serves all the same, saying why.
    opened = gate_and_promote(first, fitted_detector, small, tracking_config)
    assert opened.verdict == "inconclusive" and opened.promoted
    assert any("first version of test-detector" in r for r in opened.reasons)
    assert alias_version("test-detector", "champion", tracking_config) == first.version

    second = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    kept = gate_and_promote(second, fitted_detector, small, tracking_config)
    assert kept.verdict == "inconclusive" and not kept.promoted
    assert kept.summary().startswith("inconclusive — not promoted")
    assert alias_version("test-detector", "champion", tracking_config) == first.version
    tags = client.get_model_version("test-detector", second.version).tags
    assert tags["gate.verdict"] == "inconclusive" and tags["gate.promoted"] == "false"
    assert tags["gate.n_holdout"] == "40" and int(tags["gate.min_holdout"]) > 40
    assert "too few to tell" in tags["gate.reasons"]
    assert client.get_run(second.run_id).data.metrics["gate_promoted"] == 0.0

    allowed = gate_and_promote(
        second, fitted_detector, small, tracking_config, GateSettings(allow_inconclusive=True)
    )
    assert allowed.verdict == "inconclusive" and allowed.promoted
    assert alias_version("test-detector", "champion", tracking_config) == second.version
    assert client.get_model_version("test-detector", second.version).tags["gate.promoted"] == "true"


def test_each_version_describes_itself_on_its_mlflow_page(
    fitted_detector, normal_table, tracking_config, client
):
    """Run link, threshold, kind, quantile, calibration size, data kind and the gate's verdict."""
    model = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    before = client.get_model_version("test-detector", model.version).description
    assert "| promotion gate | not run yet |" in before
    gate = gate_and_promote(
        model, fitted_detector, make_sensor_table(40, seed=104), tracking_config
    )
    text = client.get_model_version("test-detector", model.version).description
    experiment = client.get_run(model.run_id).info.experiment_id
    thr = fitted_detector.thresholder_
    assert f"[{model.run_id}](#/experiments/{experiment}/runs/{model.run_id})" in text
    assert f"| threshold | {fitted_detector.threshold_:.6g} (quantile) |" in text
    assert f"| quantile | {thr.q} |" in text
    assert f"| calibration rows | {len(thr.calibration_scores_)} |" in text
    assert "| data | tabular, from `train.parquet`" in text
    assert "**inconclusive** — promoted: hold-out false-positive rate" in text
    assert "of 40 rows" in text and f"{gate.min_holdout} rows needed to tell" in text
    assert "first version of test-detector" in text

    changed, _, new_thr = change_threshold(
        model.model_uri, tracking_config, "too many | pages", quantile=0.99, changed_by="rev"
    )
    text = client.get_model_version("test-detector", changed.version).description
    assert f"| threshold | {new_thr:.6g} (quantile) |" in text and "| quantile | 0.99 |" in text
    assert "by rev: too many \\| pages" in text and "| data | tabular" in text
    assert "| promotion gate | not run (a threshold change" in text
    assert f"runs/{changed.run_id})" in text


def test_retried_registration_registers_once(
    fitted_detector, normal_table, tracking_config, client
):
    a = log_training_run(
        fitted_detector, normal_table, "t.parquet", tracking_config, idempotency_key="run-1"
    )
    b = log_training_run(
        fitted_detector, normal_table, "t.parquet", tracking_config, idempotency_key="run-1"
    )
    assert (a.version, a.run_id) == (b.version, b.run_id)
    assert len(client.search_model_versions("name='test-detector'")) == 1
    c = log_training_run(
        fitted_detector, normal_table, "t.parquet", tracking_config, idempotency_key="run-2"
    )
    assert c.version == "2"


def test_threshold_set_registers_a_new_version_and_keeps_the_old(
    fitted_detector, normal_table, incoming_table, tracking_config, client, tmp_path
):
    log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    new, old_thr, new_thr = change_threshold(
        "models:/test-detector/1",
        tracking_config,
        "too many pages at night",
        quantile=0.99,
        changed_by="reviewer",
    )
    cal = fitted_detector.thresholder_.calibration_scores_
    assert new.version == "2" and old_thr == fitted_detector.threshold_
    assert new_thr == QuantileThreshold(0.99).fit(cal).threshold_ > old_thr
    tags = client.get_model_version("test-detector", "2").tags
    assert tags["threshold_changed_by"] == "reviewer"
    assert tags["threshold_change_reason"] == "too many pages at night"
    assert tags["quantile"] == "0.99" and tags["data_source"] == "train.parquet"
    change_run = client.get_run(new.run_id)
    assert change_run.info.run_name.startswith("threshold test-detector v1 -> v2")
    assert change_run.data.tags["anomaly.created_version"] == "2"
    assert client.get_run(tags["run_id"]).info.run_id == new.run_id
    first_run = client.get_model_version("test-detector", "1").run_id
    assert client.get_run(first_run).info.run_name == "train test-detector v1 (tabular)"
    old = load_registered_detector("models:/test-detector/1", tracking_config)
    assert old.detector.threshold_ == fitted_detector.threshold_
    reloaded = load_registered_detector("models:/test-detector/2", tracking_config)
    assert reloaded.detector.threshold_ == new_thr
    np.testing.assert_array_equal(
        reloaded.detector.score_samples(incoming_table),
        fitted_detector.score_samples(incoming_table),
    )

    # The CLI, with a value: a fixed threshold that survives save/load, and the champion moves.
    config_file = tmp_path / "mlflow.yaml"
    config_file.write_text(
        f"tracking_uri: {tracking_config.tracking_uri}\nartifact_location: {tracking_config.artifact_location}\n"
        f"experiment_name: {tracking_config.experiment_name}\nregistered_model_name: test-detector\n"
    )
    value = float(np.quantile(cal, 0.97))
    result = CliRunner().invoke(
        app,
        [
            "threshold",
            "set",
            "models:/test-detector/1",
            "--value",
            str(value),
            "--reason",
            "audit",
            "--champion",
            "--tracking-config",
            str(config_file),
        ],
    )
    assert result.exit_code == 0, result.output
    fixed = load_registered_detector("models:/test-detector@champion", tracking_config)
    assert fixed.version == "3" and fixed.detector.threshold_ == pytest.approx(value)
    assert 0.96 < fixed.detector.thresholder_.q < 0.98
    refused = CliRunner().invoke(
        app,
        [
            "threshold",
            "set",
            "models:/test-detector/1",
            "--reason",
            "x",
            "--tracking-config",
            str(config_file),
        ],
    )
    assert refused.exit_code == 2 and "exactly one of --quantile or --value" in refused.output


def test_a_version_for_other_input_is_never_promoted_over_the_champion(
    fitted_detector, normal_table, tracking_config, client
):
    from anomaly import AutoencoderDetector
    from anomaly.data.images import ImageBatch
    from anomaly.data.synthetic import make_blob_images

    holdout = make_sensor_table(600, seed=101)
    first = log_training_run(fitted_detector, normal_table, "train.parquet", tracking_config)
    assert gate_and_promote(first, fitted_detector, holdout, tracking_config).passed

    # Same name, one feature fewer: it would quarantine nothing but score other columns.
    narrower = normal_table.drop(columns=["humidity"])
    other = AutoencoderDetector(
        categorical_columns=["machine_type"],
        key_columns=["reading_id", "timestamp"],
        epochs=3,
        verbose=False,
    ).fit(narrower)
    second = log_training_run(other, narrower, "train.parquet", tracking_config)
    refused = gate_and_promote(second, other, holdout.drop(columns=["humidity"]), tracking_config)
    assert not refused.passed
    assert any(
        "drops ['humidity']" in r and f"version {first.version}" in r for r in refused.reasons
    )
    assert alias_version("test-detector", "champion", tracking_config) == first.version

    # Same name, another data kind: an image model must not replace a tabular champion.
    images = make_blob_images(120, (16, 16), seed=1)
    image_model = AutoencoderDetector(
        model="conv", epochs=2, batch_size=32, verbose=False, image_size=(16, 16)
    ).fit(images)
    paths = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(images))]})
    batch = ImageBatch(images, paths, pd.DataFrame({"path": [], "reason": []}))
    third = log_training_run(image_model, batch, "images/", tracking_config)
    refused = gate_and_promote(third, image_model, batch, tracking_config)
    assert any("scores images data, the champion scores tabular data" in r for r in refused.reasons)
    assert alias_version("test-detector", "champion", tracking_config) == first.version
    tags = client.get_model_version("test-detector", third.version).tags
    assert (
        tags["gate.passed"] == "false" and "register it under another name" in tags["gate.reasons"]
    )


def test_threshold_set_on_a_pot_model_refits_the_tail(normal_table, tracking_config):
    from anomaly import AutoencoderDetector
    from anomaly.thresholds import PotThreshold

    detector = AutoencoderDetector(
        threshold="pot", epochs=5, verbose=False, device="cpu", categorical_columns=["machine_type"]
    ).fit(normal_table, quantile=0.99)
    log_training_run(detector, normal_table, "train.parquet", tracking_config)
    _, old_thr, new_thr = change_threshold(
        "models:/test-detector/1", tracking_config, "rarer pages", quantile=0.999
    )
    cal = detector.thresholder_.calibration_scores_  # 500 rows: no conformal 0.999 exists
    assert old_thr == detector.threshold_
    assert new_thr == PotThreshold(0.999).fit(cal).threshold_ > old_thr
    reloaded = load_registered_detector("models:/test-detector/2", tracking_config)
    assert isinstance(reloaded.detector.thresholder_, PotThreshold)
    assert reloaded.detector.threshold_ == new_thr
