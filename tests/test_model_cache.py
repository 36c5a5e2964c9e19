"""The local cache of registry models: real SQLite MLflow store, real artifact store."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from anomaly import ModelFileError
from anomaly.tracking import load_registered_detector, log_training_run
from anomaly.tracking.model_cache import CACHE_ENV, cache_root


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


@pytest.fixture
def registered(fitted_detector, normal_table, tracking_config):
    return log_training_run(
        fitted_detector, normal_table.iloc[:400], "data/train.parquet", tracking_config
    )


def _entries(root: Path) -> list[Path]:
    return sorted(p.parents[2] for p in root.rglob("manifest.json"))


def test_cache_root_follows_the_environment(cache, monkeypatch):
    assert cache_root() == cache
    monkeypatch.delenv(CACHE_ENV)
    assert cache_root() == Path.home() / ".cache" / "anomaly" / "models"


def test_a_model_fetched_once_loads_without_the_artifact_store(
    cache, registered, tracking_config, incoming_table
):
    first = load_registered_detector(registered.model_uri, tracking_config)
    (entry,) = _entries(cache)
    assert entry.name.startswith("v1-") and entry.parent.name == "test-detector"
    # No half-written temporaries are left beside the entry.
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
    shutil.rmtree(tracking_config.artifact_location)  # a download now could not succeed

    again = load_registered_detector("models:/test-detector/latest", tracking_config)
    assert (again.name, again.version) == ("test-detector", "1")
    np.testing.assert_array_equal(
        again.detector.score_samples(incoming_table), first.detector.score_samples(incoming_table)
    )


def test_a_tampered_cached_file_is_fetched_again_or_refused(
    cache, registered, tracking_config, incoming_table
):
    expected = load_registered_detector(registered.model_uri, tracking_config).detector
    (entry,) = _entries(cache)
    weights = entry / "artifacts" / "detector" / "weights.safetensors"
    original = weights.read_bytes()
    data = bytearray(original)
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))

    refetched = load_registered_detector(registered.model_uri, tracking_config).detector
    assert weights.read_bytes() == original
    np.testing.assert_array_equal(
        refetched.score_samples(incoming_table), expected.score_samples(incoming_table)
    )

    # Tampered again, with nothing to fetch a good copy from: refused, never loaded.
    weights.write_bytes(bytes(data))
    shutil.rmtree(tracking_config.artifact_location)
    with pytest.raises(ModelFileError):
        load_registered_detector(registered.model_uri, tracking_config)
    assert _entries(cache) == []


def test_a_rewritten_cached_manifest_is_refused(cache, registered, tracking_config):
    load_registered_detector(registered.model_uri, tracking_config)
    (entry,) = _entries(cache)
    manifest = entry / "artifacts" / "detector" / "manifest.json"
    manifest.write_text(manifest.read_text().replace("{", '{"extra.txt": "00",', 1))
    shutil.rmtree(tracking_config.artifact_location)
    with pytest.raises(ModelFileError, match="models:/test-detector/1"):
        load_registered_detector(registered.model_uri, tracking_config)


def test_each_version_is_its_own_entry_and_no_cache_writes_none(
    cache, registered, fitted_detector, normal_table, tracking_config
):
    second = log_training_run(
        fitted_detector, normal_table.iloc[:300], "data/train.parquet", tracking_config
    )
    assert load_registered_detector(second.model_uri, tracking_config, cache=False).version == "2"
    assert _entries(cache) == []
    load_registered_detector(registered.model_uri, tracking_config)
    load_registered_detector(second.model_uri, tracking_config)
    assert [e.name.split("-")[0] for e in _entries(cache)] == ["v1", "v2"]
