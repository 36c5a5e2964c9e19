"""A dense ensemble saved before ensembles became one batched module loads and scores as then.

The fixture (``tests/fixtures/ensemble_v1``, written by ``make_fixture.py`` there with the code
of the time) holds per-member weights (``members.<i>.<layer>``) and the outputs they gave.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anomaly import AutoencoderDetector

FIXTURE = Path(__file__).parent / "fixtures" / "ensemble_v1"


def _outputs(detector: AutoencoderDetector, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        "score_samples": detector.score_samples(frame),
        "p_values": detector.p_values(frame),
        "predict": detector.predict(frame),
        "feature_errors": detector.feature_errors(frame).to_numpy(),
        "latent": detector.latent(frame),
    }


def test_old_ensemble_loads_and_scores_as_when_saved() -> None:
    detector = AutoencoderDetector.load(FIXTURE / "model", device="cpu")
    frame = pd.read_parquet(FIXTURE / "inputs.parquet")
    expected = np.load(FIXTURE / "expected_arrays.npz")
    got = _outputs(detector, frame)
    assert sorted(expected.files) == sorted(got)
    for name, value in got.items():
        want = expected[name]
        assert value.shape == want.shape, name
        # Members' matmuls batched into one may sum in another order: float32 rounding only.
        np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.array_equal(got["predict"], expected["predict"])


def test_old_ensemble_resaved_keeps_its_outputs(tmp_path: Path) -> None:
    detector = AutoencoderDetector.load(FIXTURE / "model", device="cpu")
    frame = pd.read_parquet(FIXTURE / "inputs.parquet")
    before = detector.score_samples(frame)
    detector.save(tmp_path / "again")
    again = AutoencoderDetector.load(tmp_path / "again", device="cpu")
    assert np.array_equal(again.score_samples(frame), before)
