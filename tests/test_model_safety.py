"""Safe loading through the registry: real SQLite MLflow store, real artifact store."""

import mlflow
import numpy as np
import pytest

from anomaly import ModelFileError
from anomaly.tracking import load_registered_detector, log_training_run


@pytest.fixture
def registered(fitted_detector, normal_table, tracking_config):
    return log_training_run(
        fitted_detector, normal_table.iloc[:400], "data/train.parquet", tracking_config
    )


def _logged_model_dirs(tracking_config):
    """Directories of the artifact store holding a logged model (an ``MLmodel`` file)."""
    from pathlib import Path

    return sorted(p.parent for p in Path(tracking_config.artifact_location).rglob("MLmodel"))


def test_tampered_files_in_the_artifact_store_are_refused(registered, tracking_config):
    (model_dir,) = _logged_model_dirs(tracking_config)
    detector = model_dir / "artifacts" / "detector"
    for name in ("detector.json", "weights.safetensors"):
        original = (detector / name).read_bytes()
        data = bytearray(original)
        data[-5] ^= 0x01
        (detector / name).write_bytes(bytes(data))
        with pytest.raises(ModelFileError, match=rf"{name}: checksum does not match"):
            load_registered_detector(registered.model_uri, tracking_config)
        (detector / name).write_bytes(original)
    assert load_registered_detector(registered.model_uri, tracking_config).version == "1"


def test_logged_model_has_no_pickle_and_only_pyfunc_runs_its_code(
    registered, tracking_config, tmp_path, fitted_detector, normal_table
):
    """What the README says: pyfunc executes the artifact's code, the project's loader does not.

    The model is logged as code (``mlflow_model.py``), so the artifact holds no pickle either.
    """
    (model_dir,) = _logged_model_dirs(tracking_config)
    files = [p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file()]
    assert "artifacts/detector/weights.safetensors" in files
    assert "mlflow_model.py" in files  # logged as model from code, not as a pickled object
    pickled = [f for f in files if f.endswith((".pkl", ".pickle", ".joblib", ".cloudpickle"))]
    assert pickled == []
    mlmodel = (model_dir / "MLmodel").read_text()
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in mlmodel
    assert "python_model.pkl" not in mlmodel

    marker = tmp_path / "artifact-code-ran"
    entry = model_dir / "mlflow_model.py"
    entry.write_text(entry.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n")

    loaded = load_registered_detector(registered.model_uri, tracking_config)
    assert not marker.exists()
    rows = normal_table.iloc[:50]
    np.testing.assert_array_equal(
        loaded.detector.score_samples(rows), fitted_detector.score_samples(rows)
    )

    mlflow.set_tracking_uri(tracking_config.tracking_uri)
    mlflow.pyfunc.load_model(registered.model_uri)
    assert marker.read_text() == "ran"


def _rewrite_manifest(detector_dir):
    """What a tamperer who knows the format does: recompute every checksum after an edit."""
    import json

    from anomaly.data.parquet import file_sha256

    names = [p.name for p in sorted(detector_dir.iterdir()) if p.name != "manifest.json"]
    manifest = {name: file_sha256(detector_dir / name) for name in names}
    (detector_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _edit_weights(detector_dir):
    from safetensors.numpy import load_file, save_file

    weights = load_file(str(detector_dir / "weights.safetensors"))
    save_file({k: v * 0 + 1 for k, v in weights.items()}, str(detector_dir / "weights.safetensors"))


def _fixed_threshold(detector_dir):
    import json

    config = json.loads((detector_dir / "detector.json").read_text())
    config["threshold"] = {**config["threshold"], "kind": "fixed", "threshold": 1e9}
    (detector_dir / "detector.json").write_text(json.dumps(config))


def _scaled_calibration(detector_dir):
    import json

    from safetensors.numpy import load_file, save_file

    from anomaly.thresholds import threshold_from_dict

    scores = load_file(str(detector_dir / "calibration.safetensors"))["scores"] * 1000
    save_file({"scores": scores}, str(detector_dir / "calibration.safetensors"))
    config = json.loads((detector_dir / "detector.json").read_text())
    config["threshold"]["threshold"] = (
        threshold_from_dict(config["threshold"]).fit(scores).threshold_
    )
    (detector_dir / "detector.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "tamper",
    [_edit_weights, _fixed_threshold, _scaled_calibration],
    ids=["weights edited", "fixed threshold of 1e9", "calibration x1000, threshold recomputed"],
)
def test_tampering_with_the_manifest_rewritten_is_refused(registered, tracking_config, tamper):
    from anomaly import AutoencoderDetector

    (model_dir,) = _logged_model_dirs(tracking_config)
    detector_dir = model_dir / "artifacts" / "detector"
    tamper(detector_dir)
    _rewrite_manifest(detector_dir)
    AutoencoderDetector.load(detector_dir)  # the checksums alone no longer tell
    with pytest.raises(ModelFileError, match=r"models:/test-detector/1: model files differ"):
        load_registered_detector(registered.model_uri, tracking_config)


def test_the_registered_threshold_is_checked_against_the_model(registered, tracking_config):
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_config.tracking_uri)
    MlflowClient().set_model_version_tag("test-detector", "1", "threshold", "123")
    with pytest.raises(ModelFileError, match="differs from the 123 recorded on the version"):
        load_registered_detector(registered.model_uri, tracking_config)
