"""Batch monitoring, alerts and the promotion gate: statistics on known distributions and on a real detector."""

import numpy as np
import pytest

from anomaly.data.synthetic import make_sensor_table
from anomaly.monitoring import (
    AlertSettings,
    GateSettings,
    min_holdout_size,
    monitor_batch,
    population_stability_index,
    promotion_gate,
)
from anomaly.thresholds import QuantileThreshold


@pytest.fixture
def calibrated(rng):
    cal = rng.lognormal(0.0, 0.5, 2000)
    return cal, QuantileThreshold(0.95).fit(cal)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift(rng):
    ref = rng.normal(size=5000)
    assert population_stability_index(ref, rng.normal(size=2000)) < 0.02
    assert population_stability_index(ref, rng.normal(1.0, 1.0, 2000)) > 0.5


def test_normal_batch_raises_no_alert(rng, calibrated):
    cal, thr = calibrated
    report = monitor_batch(rng.lognormal(0.0, 0.5, 1500), cal, thr.threshold_, thr.q, 3)
    assert report.alerts == ()
    assert report.rate_p_value > 0.001 and report.psi < 0.1
    assert report.expected_rate == pytest.approx(0.05)
    assert report.rows_rejected == 3
    assert 0.02 < report.anomaly_rate < 0.08
    assert report.metrics()["alert"] == 0.0


def test_batch_with_more_anomalies_alerts_on_rate(rng, calibrated):
    cal, thr = calibrated
    scores = np.concatenate([rng.lognormal(0.0, 0.5, 900), rng.lognormal(3.0, 0.5, 100)])
    report = monitor_batch(scores, cal, thr.threshold_, thr.q)
    assert report.alert
    assert any("anomaly rate" in reason for reason in report.alerts)
    assert report.rate_p_value < 1e-6


def test_drifted_batch_alerts_on_psi_even_below_the_threshold(rng, calibrated):
    cal, thr = calibrated
    # Everything moved up, but stays under the threshold: no excess flags, only drift.
    scores = np.minimum(rng.lognormal(0.6, 0.2, 1000), thr.threshold_ * 0.99)
    report = monitor_batch(
        scores, cal, thr.threshold_, thr.q, settings=AlertSettings(psi_limit=0.25)
    )
    assert report.rows_flagged == 0
    assert [r for r in report.alerts if "drift" in r] and report.psi > 0.25
    assert report.ks_statistic > 0.3


def test_tiny_batch_never_alerts(rng, calibrated):
    cal, thr = calibrated
    report = monitor_batch(np.full(5, thr.threshold_ * 10), cal, thr.threshold_, thr.q)
    assert report.rows_flagged == 5 and not report.alert


def test_gate_passes_on_exchangeable_holdout_and_fails_on_a_shifted_one(rng, calibrated):
    _, thr = calibrated
    ok = promotion_gate(rng.lognormal(0.0, 0.5, 400), thr.threshold_, thr.q)
    assert ok.passed and ok.promoted and ok.reasons == () and ok.min_holdout < 400
    assert ok.ci_low <= 0.05 <= ok.ci_high
    bad = promotion_gate(rng.lognormal(0.5, 0.5, 400), thr.threshold_, thr.q)
    assert not bad.passed
    assert "excludes the target 5.00%" in bad.reasons[0]
    assert bad.false_positive_rate > bad.ci_low > 0.05


@pytest.mark.parametrize("quantile", [0.9, 0.95, 0.99])
def test_min_holdout_is_the_size_from_which_a_twice_too_loose_model_is_refused(quantile):
    """Derived, not a constant: at the size a hold-out at 2x the target rate fails; one row less passes."""
    target = 1 - quantile
    n = min_holdout_size(quantile, 0.99, 2.0)
    settings = GateSettings(min_holdout=0)  # the plain interval check, whatever the size

    def at_twice_the_target(rows):
        # floor(2 * target * rows) rows over a threshold of 1.0, the rest below it.
        k = int(np.floor(2 * target * rows + 1e-9))
        return promotion_gate(np.r_[np.full(k, 2.0), np.zeros(rows - k)], 1.0, quantile, settings)

    assert at_twice_the_target(n).verdict == "failed"
    assert at_twice_the_target(n - 1).verdict == "passed"
    # Fewer rows are needed to refuse a model further off, more for a tighter tolerance.
    assert min_holdout_size(quantile, 0.99, 3.0) < n < min_holdout_size(quantile, 0.99, 1.5)
    assert min_holdout_size(quantile, 0.95, 2.0) < n


def test_a_holdout_too_small_to_tell_is_inconclusive_and_not_promoted(calibrated):
    """40 clean rows: the 99% interval [0%, 12.4%] holds the 5% target and a 10% model alike."""
    _, thr = calibrated
    small = promotion_gate(np.zeros(40), thr.threshold_, thr.q)
    assert small.verdict == "inconclusive" and not small.promoted and not small.passed
    assert small.ci_high > 0.10 and small.min_holdout == min_holdout_size(0.95)
    assert f"at least {small.min_holdout} are needed" in small.reasons[0]
    assert small.summary().startswith("inconclusive — not promoted")
    allowed = promotion_gate(
        np.zeros(40), thr.threshold_, thr.q, GateSettings(allow_inconclusive=True)
    )
    assert allowed.verdict == "inconclusive" and allowed.promoted
    # A small hold-out can still prove a version bad: 20 of 40 over the threshold fails outright.
    bad = promotion_gate(np.r_[np.full(20, np.inf), np.zeros(20)], thr.threshold_, thr.q)
    assert bad.verdict == "failed" and not bad.promoted
    # An explicit minimum overrides the derived one.
    assert promotion_gate(np.zeros(40), thr.threshold_, thr.q, GateSettings(min_holdout=40)).passed


def test_gate_auroc_floor(rng, calibrated):
    _, thr = calibrated
    holdout = rng.lognormal(0.0, 0.5, 400)
    labels = np.r_[np.zeros(300, bool), np.ones(30, bool)]
    separable = np.r_[rng.lognormal(0.0, 0.5, 300), rng.lognormal(3.0, 0.3, 30)]
    random = rng.permutation(separable)
    settings = GateSettings(auroc_floor=0.9)
    assert promotion_gate(holdout, thr.threshold_, thr.q, settings, separable, labels).passed
    failed = promotion_gate(holdout, thr.threshold_, thr.q, settings, random, labels)
    assert not failed.passed and "AUROC" in failed.reasons[0]
    missing = promotion_gate(holdout, thr.threshold_, thr.q, settings)
    assert not missing.passed and "no labelled data" in missing.reasons[0]


def test_real_detector_normal_batch_quiet_and_anomalous_batch_alerts(fitted_detector):
    thr = fitted_detector.thresholder_
    normal = make_sensor_table(1500, anomaly_fraction=0.0, seed=77)
    shifted = make_sensor_table(1500, anomaly_fraction=0.15, seed=78)
    quiet = monitor_batch(
        fitted_detector.score_samples(normal), thr.calibration_scores_, thr.threshold_, thr.q
    )
    loud = monitor_batch(
        fitted_detector.score_samples(shifted), thr.calibration_scores_, thr.threshold_, thr.q
    )
    assert not quiet.alert, quiet.alerts
    assert loud.alert and loud.anomaly_rate > 0.1


def test_a_sampled_batch_tests_its_rate_on_the_exact_counts(rng, calibrated):
    # A streamed batch keeps a uniform sample of its scores; the counts are exact.
    cal, thr = calibrated
    sample = rng.lognormal(0.0, 0.5, 1000)
    flagged_in_sample = int((sample > thr.threshold_).sum())
    whole = monitor_batch(sample, cal, thr.threshold_, thr.q, counts=(200_000, 20_000))
    assert whole.rows_scored == 200_000 and whole.rows_flagged == 20_000
    assert whole.anomaly_rate == pytest.approx(0.1)
    assert any("anomaly rate" in reason for reason in whole.alerts)
    sampled = monitor_batch(sample, cal, thr.threshold_, thr.q)
    assert sampled.rows_flagged == flagged_in_sample and not sampled.alert
    assert whole.psi == sampled.psi and whole.ks_statistic == sampled.ks_statistic
