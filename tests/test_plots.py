"""Review plots show what a reviewer looks for."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np

from anomaly.plots import latent_pca, score_histogram


def test_batch_histogram_counts_on_a_log_scale_with_the_flagged_share():
    rng = np.random.default_rng(0)
    calibration = rng.lognormal(0, 0.3, 1000)
    threshold = float(np.quantile(calibration, 0.95))
    batch = np.concatenate([rng.lognormal(0, 0.3, 900), rng.lognormal(1.5, 0.2, 100)])
    fig = score_histogram(calibration, threshold, 0.95, batch, title="batch")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xscale() == "log"
    flagged = int((batch > threshold).sum())
    texts = " ".join(t.get_text() for t in ax.texts)
    assert f"flagged {flagged / len(batch):.1%} ({flagged} of 1000)" in texts
    assert "expected on normal data 5.0%" in texts
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(label.startswith("calibration, scaled to the batch") for label in labels)
    assert any(label.startswith("threshold q=0.95") for label in labels)


def test_calibration_histogram_alone_counts_rows():
    calibration = np.random.default_rng(1).lognormal(0, 0.3, 500)
    fig = score_histogram(calibration, float(np.quantile(calibration, 0.95)), 0.95)
    assert fig.axes[0].get_ylabel() == "rows" and not fig.axes[0].texts


def test_latent_view_colours_points_by_score_and_rings_those_above_the_threshold():
    rng = np.random.default_rng(2)
    codes = rng.normal(size=(300, 6))
    scores = rng.lognormal(0, 0.5, 300)
    threshold = float(np.quantile(scores, 0.9))
    fig = latent_pca(codes, scores, threshold, "calibration windows")
    ax, bar = fig.axes  # the scatter and its colour bar
    below, above = ax.collections
    # Colours come from the scores themselves (not two fixed colours), on one shared scale.
    np.testing.assert_allclose(np.sort(below.get_array()), np.sort(scores[scores <= threshold]))
    np.testing.assert_allclose(np.sort(above.get_array()), np.sort(scores[scores > threshold]))
    assert below.norm is above.norm and below.norm.vmax == scores.max()
    assert len(above.get_offsets()) == int((scores > threshold).sum()) == 30
    assert bar.get_ylabel() == "anomaly score"
    assert [round(line.get_ydata()[0], 9) for line in bar.lines] == [round(threshold, 9)]
    assert "300 calibration windows" in ax.get_title()
