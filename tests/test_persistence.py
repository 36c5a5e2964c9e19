import json

import numpy as np
import pytest

from anomaly import AutoencoderDetector, ModelFileError


@pytest.fixture
def saved(tmp_path, fitted_detector):
    path = tmp_path / "model"
    fitted_detector.save(path)
    return path


def test_saved_directory_has_no_pickle(saved):
    assert sorted(p.name for p in saved.iterdir()) == [
        "calibration.safetensors",
        "detector.json",
        "manifest.json",
        "preprocessor.json",
        "preprocessor.skops",
        "weights.safetensors",
    ]
    config = json.loads((saved / "detector.json").read_text())
    assert config["format"] == "anomaly-detector"
    assert config["schema"]["keys"] == ["reading_id", "timestamp"]


def test_overwrite_is_atomic_and_leaves_no_temporaries(saved, fitted_detector, incoming_table):
    fitted_detector.save(saved)
    assert [p.name for p in saved.parent.iterdir()] == ["model"]
    np.testing.assert_array_equal(
        AutoencoderDetector.load(saved).score_samples(incoming_table),
        fitted_detector.score_samples(incoming_table),
    )


def test_tampered_weights_are_detected(saved):
    weights = saved / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"weights\.safetensors: checksum does not match"):
        AutoencoderDetector.load(saved)


def test_truncated_file_is_detected(saved):
    cal = saved / "calibration.safetensors"
    cal.write_bytes(cal.read_bytes()[:20])
    with pytest.raises(ModelFileError, match="truncated or modified"):
        AutoencoderDetector.load(saved)


def test_missing_files_and_unknown_format(saved, tmp_path):
    with pytest.raises(ModelFileError, match="not a saved detector"):
        AutoencoderDetector.load(tmp_path / "elsewhere")
    (saved / "preprocessor.json").unlink()
    with pytest.raises(ModelFileError, match="listed in the manifest but missing"):
        AutoencoderDetector.load(saved)


def test_future_format_version_is_refused(saved):
    config = json.loads((saved / "detector.json").read_text())
    config["format_version"] = 99
    (saved / "detector.json").write_text(json.dumps(config))
    manifest = json.loads((saved / "manifest.json").read_text())
    import hashlib

    manifest["detector.json"] = hashlib.sha256((saved / "detector.json").read_bytes()).hexdigest()
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="found anomaly-detector v99"):
        AutoencoderDetector.load(saved)


def test_save_refuses_to_replace_a_directory_that_is_not_a_model(tmp_path, fitted_detector):
    precious = tmp_path / "outputs"
    precious.mkdir()
    (precious / "scores.parquet").write_text("keep me")
    with pytest.raises(ModelFileError, match="is not a saved detector; refusing to replace it"):
        fitted_detector.save(precious)
    assert (precious / "scores.parquet").read_text() == "keep me"
