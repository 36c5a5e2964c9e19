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
