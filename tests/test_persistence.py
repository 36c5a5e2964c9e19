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


# --- Safe loading: every damaged file is a ModelFileError naming it --------------------------
#
# A file changed without updating the manifest is caught by its checksum. To reach the check
# behind the checksum (what stops a file whose manifest entry was forged as well), the tests
# below rewrite the manifest entry after damaging the file.


def _rehash(directory, name):
    import hashlib

    manifest = json.loads((directory / "manifest.json").read_text())
    manifest[name] = hashlib.sha256((directory / name).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "name",
    [
        "detector.json",
        "manifest.json",
        "preprocessor.json",
        "preprocessor.skops",
        "calibration.safetensors",
    ],
)
def test_any_modified_file_is_caught_by_its_checksum(saved, name):
    path = saved / name
    if name == "manifest.json":  # a forged checksum for another file
        manifest = json.loads(path.read_text())
        manifest["weights.safetensors"] = "0" * 64
        path.write_text(json.dumps(manifest))
        name = "weights.safetensors"
    else:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=rf"{name}: checksum does not match"):
        AutoencoderDetector.load(saved)


def test_invalid_json_detector_file_is_named(saved):
    (saved / "detector.json").write_text('{"format": "anomaly-detector", ')
    _rehash(saved, "detector.json")
    with pytest.raises(ModelFileError, match=r"detector\.json: unreadable"):
        AutoencoderDetector.load(saved)


@pytest.mark.parametrize("drop", ["params", "module_config", "threshold", "history", "schema"])
def test_detector_json_missing_an_entry_is_named(saved, drop):
    config = json.loads((saved / "detector.json").read_text())
    del config[drop]
    (saved / "detector.json").write_text(json.dumps(config))
    _rehash(saved, "detector.json")
    with pytest.raises(ModelFileError, match=rf"detector\.json.*{drop}"):
        AutoencoderDetector.load(saved)


def test_detector_json_with_an_unknown_parameter_is_refused(saved):
    config = json.loads((saved / "detector.json").read_text())
    config["params"]["__class__"] = "os.system"
    (saved / "detector.json").write_text(json.dumps(config))
    _rehash(saved, "detector.json")
    with pytest.raises(ModelFileError, match=r"detector\.json"):
        AutoencoderDetector.load(saved)


@pytest.mark.parametrize("content", [None, b"", b"not json", b"[1, 2]", b'{"x": 1'])
def test_missing_or_unreadable_manifest_is_named(saved, content):
    manifest = saved / "manifest.json"
    if content is None:
        manifest.unlink()
    else:
        manifest.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"manifest\.json"):
        AutoencoderDetector.load(saved)


def test_manifest_that_leaves_a_file_out_is_refused(saved):
    """An emptied manifest would check nothing: every model file must be listed."""
    (saved / "manifest.json").write_text("{}")
    with pytest.raises(ModelFileError, match=r"not listed in the manifest"):
        AutoencoderDetector.load(saved)
    (saved / "manifest.json").write_text(json.dumps({"detector.json": "0" * 64}))
    with pytest.raises(
        ModelFileError, match=r"calibration\.safetensors: not listed in the manifest"
    ):
        AutoencoderDetector.load(saved)


def test_files_the_loader_never_reads_are_let_be(saved, fitted_detector, incoming_table):
    (saved / ".DS_Store").write_bytes(b"\x00\x01")
    (saved / "README.txt").write_text("model for line 3")
    loaded = AutoencoderDetector.load(saved)
    np.testing.assert_array_equal(
        loaded.score_samples(incoming_table), fitted_detector.score_samples(incoming_table)
    )


def test_manifest_entry_outside_the_model_directory_is_refused(saved, tmp_path):
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest["../elsewhere.txt"] = "0" * 64
    (saved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match=r"manifest\.json"):
        AutoencoderDetector.load(saved)


@pytest.mark.parametrize("name", ["weights.safetensors", "calibration.safetensors"])
@pytest.mark.parametrize("keep", [0, 7, 0.5])
def test_truncated_safetensors_with_forged_checksum_is_named(saved, name, keep):
    path = saved / name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    _rehash(saved, name)
    with pytest.raises(ModelFileError, match=rf"{name}"):
        AutoencoderDetector.load(saved)


def test_calibration_scores_that_do_not_give_the_threshold_are_refused(saved):
    from safetensors.numpy import save_file

    save_file({"scores": np.linspace(0, 1, 50)}, str(saved / "calibration.safetensors"))
    _rehash(saved, "calibration.safetensors")
    with pytest.raises(ModelFileError, match=r"calibration.*reproduce the saved threshold"):
        AutoencoderDetector.load(saved)


def test_calibration_file_with_the_wrong_tensor_is_named(saved):
    from safetensors.numpy import save_file

    save_file({"other": np.zeros(3)}, str(saved / "calibration.safetensors"))
    _rehash(saved, "calibration.safetensors")
    with pytest.raises(ModelFileError, match=r"calibration\.safetensors"):
        AutoencoderDetector.load(saved)


@pytest.mark.parametrize(
    "content", ["not json", "[]", '{"scaler": "standard"}', '{"medians": {}, "scaler": "bogus"}']
)
def test_damaged_preprocessor_json_is_named(saved, content):
    (saved / "preprocessor.json").write_text(content)
    _rehash(saved, "preprocessor.json")
    with pytest.raises(ModelFileError, match=r"preprocessor\.json"):
        AutoencoderDetector.load(saved)


def test_truncated_preprocessor_skops_is_named(saved):
    path = saved / "preprocessor.skops"
    path.write_bytes(path.read_bytes()[:100])
    _rehash(saved, "preprocessor.skops")
    with pytest.raises(ModelFileError, match=r"preprocessor\.skops"):
        AutoencoderDetector.load(saved)


class Tripwire:
    """Leaves a file behind if an instance is ever rebuilt from a saved state."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        from pathlib import Path

        Path(state["marker"]).write_text("executed")
        self.__dict__.update(state)


def test_preprocessor_with_a_type_outside_the_allowlist_is_refused_unexecuted(saved, tmp_path):
    """A skops file naming our own class (with a side effect on load) never gets it rebuilt."""
    import skops.io as sio
    from sklearn.compose import ColumnTransformer

    marker = tmp_path / "tripwire-fired"
    original = sio.load(
        saved / "preprocessor.skops",
        trusted=sio.get_untrusted_types(file=saved / "preprocessor.skops"),
    )
    assert isinstance(original, ColumnTransformer)
    original.tripwire = Tripwire(marker)
    sio.dump(original, saved / "preprocessor.skops")
    _rehash(saved, "preprocessor.skops")
    # The payload really would run: skops rebuilds it when told to trust it.
    sio.load(
        saved / "preprocessor.skops",
        trusted=sio.get_untrusted_types(file=saved / "preprocessor.skops"),
    )
    assert marker.read_text() == "executed"
    marker.unlink()

    with pytest.raises(
        ModelFileError, match=r"preprocessor\.skops: contains types outside the allowlist.*Tripwire"
    ):
        AutoencoderDetector.load(saved)
    assert not marker.exists()


def test_preprocessor_referencing_a_dangerous_function_is_refused(saved):
    """A FunctionTransformer (a scikit-learn type skops would build) calling os.system."""
    import os

    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer

    evil = ColumnTransformer([("run", FunctionTransformer(func=os.system), [0])])
    sio.dump(evil, saved / "preprocessor.skops")
    _rehash(saved, "preprocessor.skops")
    with pytest.raises(
        ModelFileError, match=r"preprocessor\.skops: contains types outside the allowlist.*system"
    ):
        AutoencoderDetector.load(saved)


# --- time-series detectors: series_scaler.json ------------------------------------------------


@pytest.fixture
def saved_series(tmp_path, fitted_series_detector):
    path = tmp_path / "series-model"
    fitted_series_detector.save(path)
    return path


def test_series_model_files_and_round_trip(saved_series, fitted_series_detector, series_table):
    assert "series_scaler.json" in {p.name for p in saved_series.iterdir()}
    np.testing.assert_array_equal(
        AutoencoderDetector.load(saved_series).score_samples(series_table),
        fitted_series_detector.score_samples(series_table),
    )


def test_tampered_series_scaler_is_caught_by_its_checksum(saved_series):
    path = saved_series / "series_scaler.json"
    path.write_text(path.read_text().replace("standard", "minmax"))
    with pytest.raises(ModelFileError, match=r"series_scaler\.json: checksum does not match"):
        AutoencoderDetector.load(saved_series)


@pytest.mark.parametrize(
    "content", ["not json", "{}", '{"scaler": "x", "per_series": 0, "stats": {}}']
)
def test_damaged_series_scaler_is_named(saved_series, content):
    (saved_series / "series_scaler.json").write_text(content)
    _rehash(saved_series, "series_scaler.json")
    with pytest.raises(ModelFileError, match=r"series_scaler\.json|time-series settings"):
        AutoencoderDetector.load(saved_series)
