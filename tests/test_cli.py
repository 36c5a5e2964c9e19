"""The command line, end to end against a temporary MLflow store."""

import pandas as pd
import pytest
from typer.testing import CliRunner

from anomaly.cli import app
from anomaly.data.parquet import write_parquet_atomic

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch, normal_table, incoming_table):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "mlflow.yaml").write_text(
        "tracking_uri: sqlite:///cli.db\nartifact_location: artifacts\nexperiment_name: cli\nregistered_model_name: cli-model\n"
    )
    write_parquet_atomic(normal_table, tmp_path / "train.parquet")
    write_parquet_atomic(incoming_table, tmp_path / "incoming" / "b1.parquet")
    return tmp_path


def test_train_and_score_commands(workdir, incoming_table):
    trained = runner.invoke(
        app,
        [
            "train",
            "train.parquet",
            "--categorical",
            "machine_type",
            "--keys",
            "reading_id,timestamp",
            "--epochs",
            "5",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "cli-model version 1" in trained.output
    scored = runner.invoke(app, ["score", "incoming", "--output", "out/scores.parquet"])
    assert scored.exit_code == 0, scored.output
    assert "rows scored" in scored.output
    out = pd.read_parquet(workdir / "out" / "scores.parquet")
    assert len(out) == len(incoming_table)
    assert (workdir / "out" / "scores.rejects.parquet").exists()

    (workdir / "incoming" / "b2.parquet").write_text("reading_id,power\n1,2\n")
    partial = runner.invoke(app, ["score", "incoming", "--output", "out/scores.parquet"])
    assert partial.exit_code == 3, partial.output
    assert "b2.parquet: cannot read as Parquet" in partial.output.replace("\n", "")
    assert "partial failure" in partial.output
    assert len(pd.read_parquet(workdir / "out" / "scores.parquet")) == len(incoming_table)


def test_train_says_when_the_gate_is_inconclusive(workdir, normal_table):
    """300 rows hold out 30: too few to tell, so only the first version or the flag promotes."""
    write_parquet_atomic(normal_table.iloc[:300], workdir / "small.parquet")
    args = ["train", "small.parquet", "--categorical", "machine_type", "--keys",
            "reading_id,timestamp", "--epochs", "2"]  # fmt: skip

    def gate_of(result):
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    assert "inconclusive — promoted" in gate_of(runner.invoke(app, args))
    kept = gate_of(runner.invoke(app, args))
    assert "inconclusive — not promoted" in kept and "too few to tell" in kept
    allowed = gate_of(runner.invoke(app, [*args, "--allow-inconclusive"]))
    assert "inconclusive — promoted" in allowed and "allow_inconclusive is set" in allowed


def test_errors_are_one_clear_line_and_exit_code_2(workdir):
    bad_quantile = runner.invoke(app, ["train", "train.parquet", "--quantile", "0"])
    assert bad_quantile.exit_code == 2
    assert "quantile" in bad_quantile.output and "Traceback" not in bad_quantile.output
    assert "invalid settings: quantile" in bad_quantile.output
    assert "pydantic.dev" not in bad_quantile.output
    broken_yaml = workdir / "broken.yaml"
    broken_yaml.write_text("detector: [unclosed\n")
    config_error = runner.invoke(app, ["train", "train.parquet", "--config", str(broken_yaml)])
    assert config_error.exit_code == 2 and "Traceback" not in config_error.output
    missing = runner.invoke(app, ["train", "nope.parquet"])
    assert missing.exit_code == 2
    assert "nope.parquet: no such file or directory" in missing.output
    assert "Traceback" not in missing.output
    directory = runner.invoke(app, ["score", "incoming", "--output", "incoming"])
    assert directory.exit_code == 2 and "is a directory" in directory.output
    unknown = runner.invoke(
        app, ["score", "incoming", "--output", "o.parquet", "--model-uri", "models:/ghost/3"]
    )
    # No model was trained here yet, so there is no store: scoring says so and creates none.
    assert unknown.exit_code == 2
    expected = f"no tracking store at sqlite:///{workdir / 'cli.db'}"
    assert "".join(expected.split()) in "".join(unknown.output.split())
    assert not (workdir / "cli.db").exists()
    from anomaly.tracking import TrackingConfig, configure

    configure(TrackingConfig.load())  # an empty store: now the model itself is missing
    unknown = runner.invoke(
        app, ["score", "incoming", "--output", "o.parquet", "--model-uri", "models:/ghost/3"]
    )
    assert unknown.exit_code == 2
    assert "models:/ghost/3: not found" in unknown.output


def test_threshold_show_reports_calibration_and_recent_batches(workdir, incoming_table):
    trained = runner.invoke(
        app,
        ["train", "train.parquet", "--categorical", "machine_type", "--keys",
         "reading_id,timestamp", "--epochs", "3", "--quantile", "0.9"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    scored = runner.invoke(app, ["score", "incoming", "--output", "out/s.parquet"])
    assert scored.exit_code == 0, scored.output
    flagged = pd.read_parquet(workdir / "out" / "s.parquet")["is_anomaly"].mean()

    shown = runner.invoke(app, ["threshold", "show", "models:/cli-model/1"])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    from anomaly.tracking import TrackingConfig, load_registered_detector

    detector = load_registered_detector("models:/cli-model/1", TrackingConfig.load()).detector
    assert f"{detector.threshold_:.6g} (quantile)" in text
    assert "10.00% of normal rows" in text
    assert f"calibration rows │ {len(detector.thresholder_.calibration_scores_)}" in text
    assert "0.999" in text and "Calibration errors" in text
    assert f"{flagged:.2%}" in text and "Last 1 scoring runs" in text
    assert "score cli-model v1" in text  # run names say model and version, not a random name

    missing = runner.invoke(app, ["threshold", "show", "models:/cli-model/9"])
    assert missing.exit_code == 2 and "models:/cli-model/9" in missing.output


def test_two_model_names_side_by_side(workdir, incoming_table):
    """An image model under its own name leaves the tabular champion and its scoring alone."""
    import io

    import numpy as np
    from PIL import Image

    from anomaly.data.synthetic import make_blob_images

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    images = make_blob_images(150, (16, 16), seed=4)
    frame = pd.DataFrame({"item": np.arange(150), "img": [png(i) for i in images]})
    write_parquet_atomic(frame, workdir / "images.parquet")
    tabular = runner.invoke(
        app,
        ["train", "train.parquet", "--categorical", "machine_type", "--keys",
         "reading_id,timestamp", "--epochs", "3", "--model-name", "sensors"],
    )  # fmt: skip
    assert tabular.exit_code == 0, tabular.output
    assert "sensors version 1" in tabular.output
    image = runner.invoke(
        app,
        ["train", "images.parquet", "--model", "conv", "--keys", "item", "--image-column", "img",
         "--epochs", "2", "--image-size", "16x16", "--model-name", "parts"],
    )  # fmt: skip
    assert image.exit_code == 0, image.output
    assert "parts version 1" in image.output

    scored = runner.invoke(
        app, ["score", "incoming", "--output", "out/s.parquet", "--model-name", "sensors"]
    )
    assert scored.exit_code == 0, scored.output
    assert len(pd.read_parquet(workdir / "out" / "s.parquet")) == len(incoming_table)
    shown = runner.invoke(app, ["threshold", "show", "--model-name", "parts"])
    assert shown.exit_code == 0, shown.output
    assert "models:/parts/1" in " ".join(shown.output.split())
    # mlflow.yaml's own name has no version at all: nothing was registered under it.
    default = runner.invoke(app, ["score", "incoming", "--output", "out/d.parquet"])
    assert default.exit_code == 2 and "cli-model" in default.output
