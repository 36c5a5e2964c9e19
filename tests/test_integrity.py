"""Signed model folders: with a key configured, only models signed with it load."""

from __future__ import annotations

import pytest

from anomaly import AutoencoderDetector, ModelFileError
from anomaly.integrity import SIGNATURE_FILE, SIGNING_KEY_ENV, manifest_digest, verify_digest


@pytest.fixture
def saved(fitted_detector, tmp_path, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, "k1")
    path = tmp_path / "model"
    fitted_detector.save(path)
    return path


def test_signed_model_loads_with_its_key_and_scores(saved, fitted_detector, incoming_table):
    assert (saved / SIGNATURE_FILE).is_file()
    loaded = AutoencoderDetector.load(saved)
    frame = incoming_table.iloc[:50]
    assert (loaded.score_samples(frame) == fitted_detector.score_samples(frame)).all()


def test_wrong_key_or_a_rewritten_manifest_is_refused(saved, monkeypatch):
    monkeypatch.setenv(SIGNING_KEY_ENV, "k2")
    with pytest.raises(ModelFileError, match="signature does not match"):
        AutoencoderDetector.load(saved)
    monkeypatch.setenv(SIGNING_KEY_ENV, "k1")
    manifest = saved / "manifest.json"
    manifest.write_text(manifest.read_text().replace("{", "{ ", 1))
    with pytest.raises(ModelFileError, match="signature does not match"):
        AutoencoderDetector.load(saved)


def test_unsigned_model_is_refused_once_a_key_is_configured(fitted_detector, tmp_path, monkeypatch):
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    fitted_detector.save(tmp_path / "plain")
    AutoencoderDetector.load(tmp_path / "plain")
    monkeypatch.setenv(SIGNING_KEY_ENV, "k1")
    with pytest.raises(ModelFileError, match="model is not signed"):
        AutoencoderDetector.load(tmp_path / "plain")


def test_digest_names_the_version_on_mismatch(saved):
    verify_digest(saved, manifest_digest(saved), "models:/m/1")
    with pytest.raises(ModelFileError, match="models:/m/1: model files differ"):
        verify_digest(saved, "0" * 64, "models:/m/1")
