import json
import math

import numpy as np
import pytest
from scipy import stats

from anomaly.errors import CalibrationError, NotFittedError, TailTooShortError
from anomaly.thresholds import (
    PotThreshold,
    QuantileThreshold,
    make_threshold,
    min_calibration_size,
    threshold_from_saved,
)


def test_threshold_is_the_conformal_order_statistic():
    scores = np.arange(1, 100, dtype=float)  # n = 99, q = 0.95 -> rank ceil(100 * 0.95) = 95
    assert QuantileThreshold(0.95).fit(scores[::-1]).threshold_ == 95.0
    assert QuantileThreshold(0.5).fit(scores).threshold_ == 50.0


@pytest.mark.parametrize("q,needed", [(0.95, 19), (0.99, 99), (0.9, 9), (0.5, 1)])
def test_minimum_calibration_size(q, needed):
    assert min_calibration_size(q) == needed
    QuantileThreshold(q).fit(np.arange(needed, dtype=float))
    if needed > 1:
        with pytest.raises(
            CalibrationError,
            match=f"quantile {q} needs at least {needed} calibration samples, got {needed - 1}",
        ):
            QuantileThreshold(q).fit(np.arange(needed - 1, dtype=float))


def test_non_finite_calibration_scores_are_refused():
    with pytest.raises(CalibrationError, match="not finite"):
        QuantileThreshold(0.5).fit(np.array([1.0, np.nan, 2.0]))


def test_quantile_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        QuantileThreshold(1.0)


def test_p_values_by_hand():
    thr = QuantileThreshold(0.5).fit(np.array([1.0, 2.0, 3.0, 4.0]))
    # p = (1 + #{cal >= s}) / (n + 1)
    np.testing.assert_allclose(
        thr.p_values(np.array([0.0, 2.0, 2.5, 10.0])), [1.0, 4 / 5, 3 / 5, 1 / 5]
    )


def test_p_values_are_uniform_on_fresh_normal_data(rng):
    thr = QuantileThreshold(0.95).fit(rng.normal(size=2000))
    p = thr.p_values(rng.normal(size=4000))
    assert ((p > 0) & (p <= 1)).all()
    # Given one calibration set of n scores, the p-value CDF is off by up to ~1.63/sqrt(n)
    # (DKW, 99%), plus the same for the fresh sample; a plain KS test would ignore the first.
    assert stats.kstest(p, "uniform").statistic < 1.63 * (1 / np.sqrt(2000) + 1 / np.sqrt(4000))
    # False-positive rate at the threshold is close to 1 - q.
    assert abs(thr.predict(rng.normal(size=20000)).mean() - 0.05) < 0.01


def test_predict_agrees_with_p_values_and_never_moves_the_threshold(rng):
    thr = QuantileThreshold(0.9).fit(rng.exponential(size=500))
    before = thr.threshold_
    scores = rng.exponential(size=1000) * 3
    flagged = thr.predict(scores)
    assert thr.threshold_ == before
    # Flagged iff fewer than (1 - q)(n + 1) calibration scores are at least as large.
    assert (flagged == (thr.p_values(scores) <= (1 - 0.9) + 1e-12)).all()


def test_use_before_fit_raises():
    with pytest.raises(NotFittedError):
        QuantileThreshold().predict(np.zeros(3))


# ---------------------------------------------------------------- peaks over threshold (POT)
# Tails known exactly: the exponential's excesses over any level are exponential (GPD shape 0),
# the Lomax (Pareto II, a=3) ones GPD with shape 1/3.
KNOWN_TAILS = {
    "exponential": (lambda r, n: r.exponential(size=n), math.log(1000.0)),
    "pareto": (lambda r, n: r.pareto(3.0, size=n), float(stats.lomax.ppf(0.999, 3.0))),
}


@pytest.mark.parametrize("n", [1000, 5000])
@pytest.mark.parametrize("tail", sorted(KNOWN_TAILS))
def test_pot_recovers_the_true_0999_quantile_within_its_interval(tail, n):
    draw, true = KNOWN_TAILS[tail]
    for seed in range(5):
        t = PotThreshold(0.999).fit(draw(np.random.default_rng(seed), n))
        low, high = t.interval_
        assert low < t.threshold_ < high, (seed, t.interval_)
        assert low <= true <= high, (seed, t.interval_, true)
        # The empirical order statistic cannot even exist at 0.999 with 1,000 scores.
        assert np.isfinite(high)


def test_pot_interval_coverage_is_near_its_confidence():
    # 40 seeds of 2,000 exponential scores: a 95% interval should miss about 2; more than 6
    # misses would be far outside binomial noise (P < 0.01).
    draw, true = KNOWN_TAILS["exponential"]
    misses = 0
    for seed in range(100, 140):
        low, high = PotThreshold(0.999).fit(draw(np.random.default_rng(seed), 2000)).interval_
        misses += not low <= true <= high
    assert misses <= 6


def test_pot_interval_narrows_with_more_data():
    draw, _ = KNOWN_TAILS["exponential"]
    widths = []
    for n in (1000, 10_000):
        intervals = [
            PotThreshold(0.999).fit(draw(np.random.default_rng(s), n)).interval_ for s in range(5)
        ]
        widths.append(np.mean([high - low for low, high in intervals]))
    # 10x the tail scores: about sqrt(10) ~ 3x narrower (measured 4.2 vs 1.0 mean width).
    assert widths[1] < widths[0] / 2


def test_pot_refuses_a_too_short_tail():
    scores = np.random.default_rng(0).exponential(size=150)  # 15 scores above the 0.9 quantile
    with pytest.raises(TailTooShortError, match="holds 15 scores, needs at least 20") as info:
        PotThreshold(0.999).fit(scores)
    assert (info.value.n_excesses, info.value.needed) == (15, 20)
    assert isinstance(info.value, CalibrationError)
    assert min_calibration_size(0.999, "pot") == 200
    PotThreshold(0.999).fit(np.random.default_rng(0).exponential(size=200))  # exactly enough


def test_pot_needs_the_target_above_the_tail_start():
    with pytest.raises(ValueError, match="tail_quantile < q"):
        PotThreshold(0.9, tail_quantile=0.9)
    with pytest.raises(ValueError, match="threshold must be one of"):
        make_threshold("bogus", 0.95)


def test_pot_p_values_are_monotone_and_finer_than_conformal_beyond_the_data():
    scores = np.random.default_rng(1).exponential(size=1000)
    t = PotThreshold(0.999).fit(scores)
    grid = np.linspace(0.0, 3 * scores.max(), 400)
    p = t.p_values(grid)
    assert (np.diff(p) <= 0).all()
    assert ((p > 0) & (p <= 1)).all()
    beyond = grid > scores.max()
    assert beyond.any() and (p[beyond] < 1 / (len(scores) + 1)).all()
    # Beyond the data they still order the scores, where the conformal p-value is one constant.
    assert len(np.unique(p[beyond])) == beyond.sum()
    assert np.unique(QuantileThreshold(0.95).fit(scores).p_values(grid[beyond])).size == 1
    # Below the tail start they are the conformal ones.
    body = grid <= t.tail_start_
    np.testing.assert_array_equal(p[body], QuantileThreshold(0.95).fit(scores).p_values(grid[body]))
    # At the threshold the fitted tail leaves about 1 - q.
    assert t.p_values(np.array([t.threshold_]))[0] == pytest.approx(0.001, rel=1e-6)


def test_pot_dict_round_trip_restores_the_same_fit():
    scores = np.random.default_rng(2).pareto(3.0, size=3000)
    t = PotThreshold(0.999).fit(scores)
    saved = json.loads(json.dumps(t.to_dict()))  # through JSON, as persistence writes it
    assert saved["kind"] == "pot" and saved["n_excesses"] == 300
    back = threshold_from_saved(saved, scores[::-1])
    assert isinstance(back, PotThreshold)
    assert back.threshold_ == t.threshold_ and back.interval_ == t.interval_
    np.testing.assert_array_equal(back.p_values(scores), t.p_values(scores))
    with pytest.raises(CalibrationError, match="tail"):
        threshold_from_saved(saved, scores[:-1])  # other calibration scores, another tail


def test_detector_with_pot_threshold_saves_and_loads(tmp_path, rng):
    from anomaly import AutoencoderDetector

    X = rng.normal(size=(1500, 4))
    det = AutoencoderDetector(
        threshold="pot", epochs=3, random_state=0, verbose=False, device="cpu"
    )
    det.fit(X, quantile=0.999)
    assert isinstance(det.thresholder_, PotThreshold)
    assert det.threshold_ == det.thresholder_.threshold_
    det.save(tmp_path / "model")
    loaded = AutoencoderDetector.load(tmp_path / "model", device="cpu")
    assert loaded.threshold == "pot" and isinstance(loaded.thresholder_, PotThreshold)
    assert loaded.threshold_ == det.threshold_
    assert loaded.thresholder_.interval_ == det.thresholder_.interval_
    np.testing.assert_array_equal(loaded.p_values(X[:50]), det.p_values(X[:50]))


def test_detector_refuses_pot_on_a_short_calibration_set_before_training(rng):
    from anomaly import AutoencoderDetector

    det = AutoencoderDetector(threshold="pot", epochs=3, verbose=False, device="cpu")
    with pytest.raises(CalibrationError, match=r"POT threshold.*needs at least 200 calibration"):
        det.fit(rng.normal(size=(500, 3)))  # 100 calibration rows


def test_settings_accept_pot_and_refuse_unknown_thresholds():
    import pydantic

    from anomaly.config import TrainSettings

    assert TrainSettings(detector={"threshold": "pot"}).build_detector().threshold == "pot"
    with pytest.raises(pydantic.ValidationError, match="threshold"):
        TrainSettings(detector={"threshold": "bogus"})
