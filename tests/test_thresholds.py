import numpy as np
import pytest
from scipy import stats

from anomaly.errors import CalibrationError, NotFittedError
from anomaly.thresholds import QuantileThreshold, min_calibration_size


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
