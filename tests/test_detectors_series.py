"""Time-series detectors: windows of a series in, one score per row out."""

import numpy as np
import pandas as pd
import pytest

from anomaly import AutoencoderDetector
from anomaly.data.synthetic import LABEL_COLUMN, make_series_table
from anomaly.errors import InvalidRowsError
from anomaly.scoring import score_frame

SERIES = {
    "window": 32,
    "time_column": "timestamp",
    "series_column": "machine",
    "key_columns": [LABEL_COLUMN],
    "epochs": 40,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "patience": 8,
    "verbose": False,
}


@pytest.fixture(scope="module")
def normal_series() -> pd.DataFrame:
    return make_series_table(1600, seed=3)


@pytest.fixture(scope="module")
def incoming_series() -> pd.DataFrame:
    return make_series_table(1200, anomalies=4, anomaly_length=30, seed=4, start="2024-01-02")


@pytest.fixture(scope="module")
def conv_detector(normal_series) -> AutoencoderDetector:
    return AutoencoderDetector(model="conv1d", **SERIES).fit(normal_series)


def test_planted_anomalies_flagged_normal_stretch_near_the_calibrated_rate(
    conv_detector, incoming_series
):
    flagged = conv_detector.predict(incoming_series)
    planted = (incoming_series[LABEL_COLUMN] != "").to_numpy()
    assert len(flagged) == len(incoming_series)
    # Recall per planted span: each of the four kinds is caught somewhere in its span.
    for kind in incoming_series.loc[planted, LABEL_COLUMN].unique():
        assert flagged[(incoming_series[LABEL_COLUMN] == kind).to_numpy()].any(), kind
    # Normal points away from the planted spans (a window reaches 31 points around each).
    near = np.convolve(planted, np.ones(2 * 32 + 1), mode="same") > 0
    fpr = flagged[~near].mean()
    assert fpr < 0.10, fpr  # calibrated for 5%; the normal stretch here is a few hundred points


def test_scores_are_aligned_with_input_rows(conv_detector, incoming_series):
    scores = conv_detector.score_samples(incoming_series)
    shuffled = incoming_series.sample(frac=1.0, random_state=0)
    np.testing.assert_allclose(
        conv_detector.score_samples(shuffled), scores[shuffled.index.to_numpy()], rtol=1e-5
    )


@pytest.mark.parametrize("reduction", ["mean", "last"])
def test_batch_split_in_two_scores_as_the_whole_with_context(
    normal_series, incoming_series, reduction
):
    det = AutoencoderDetector(model="conv1d", point_reduction=reduction, **{**SERIES, "epochs": 3})
    det.fit(normal_series)
    whole = det.score_samples(incoming_series)
    first, second = incoming_series.iloc[:500], incoming_series.iloc[500:]
    s1 = det.score_samples(first)
    s2 = det.score_samples(second, context=det.next_context(first))
    # The second batch's rows score exactly as in the whole, its first rows included.
    np.testing.assert_allclose(s2, whole[500:], rtol=1e-5, atol=1e-7)
    if reduction == "last":  # causal: the first batch does not depend on what follows either
        np.testing.assert_allclose(s1, whole[:500], rtol=1e-5, atol=1e-7)
    else:  # the last window - 1 rows of a batch lack the windows that reach into the next one
        np.testing.assert_allclose(s1[:-31], whole[: 500 - 31], rtol=1e-5, atol=1e-7)
    # Without the context the first rows of the second batch differ.
    assert not np.allclose(det.score_samples(second)[:31], whole[500:531], rtol=1e-5)


def test_lstm_and_dense_windows_fit_score_and_round_trip(normal_series, incoming_series, tmp_path):
    for model, extra in [
        ("lstm_seq2seq", {"hidden_layers": (16,), "latent_dim": 8, "window": 16, "epochs": 3}),
        ("dense", {"window": 16, "epochs": 5}),
    ]:
        det = AutoencoderDetector(model=model, **{**SERIES, **extra}).fit(normal_series)
        scores = det.score_samples(incoming_series)
        assert scores.shape == (len(incoming_series),) and np.isfinite(scores).all()
        det.save(tmp_path / model)
        loaded = AutoencoderDetector.load(tmp_path / model)
        np.testing.assert_array_equal(loaded.score_samples(incoming_series), scores)
        assert loaded.threshold_ == det.threshold_
        assert loaded.latent(incoming_series).shape[0] == len(incoming_series)


def test_score_frame_rejects_duplicates_and_short_series_with_reasons(conv_detector):
    batch = make_series_table(200, n_series=2, seed=5, start="2024-01-03")
    batch = pd.concat([batch, batch.iloc[[10]]], ignore_index=True)  # a duplicated timestamp
    short = make_series_table(20, seed=6, start="2024-01-04").assign(machine="tiny")
    batch = pd.concat([batch, short], ignore_index=True).sample(frac=1.0, random_state=1)
    out = score_frame(conv_detector, batch, "m", "1", source="batch.parquet")
    assert out.n_scored + out.n_rejected == len(batch)
    assert out.n_rejected == 21
    reasons = out.rejected["reason"]
    assert reasons.str.contains("duplicate timestamp").sum() == 1
    assert reasons.str.contains("fewer than the window of 32").sum() == 20
    assert out.series_counts["duplicate_rows"] == 1
    assert {"timestamp", "machine", "anomaly_score", "top_feature", "source_row"} <= set(out.scored)
    # Unseen series 'm1' and 'tiny' were scaled with global statistics and scored all the same.
    assert out.scored["machine"].nunique() == 2
    with pytest.raises(InvalidRowsError, match="21 of 421 rows cannot be scored"):
        conv_detector.score_samples(batch)


def test_per_series_scaling_and_gaps(normal_series):
    two = make_series_table(800, n_series=2, seed=7)
    two.loc[two["machine"] == "m1", "temperature"] += 40  # a hotter machine, normal for it
    det = AutoencoderDetector(
        model="conv1d", series_scaling="per_series", **{**SERIES, "epochs": 10}
    ).fit(two)
    assert det.frequency_ == 1.0
    gappy = make_series_table(300, n_series=2, seed=8, start="2024-01-05")
    gappy.loc[gappy["machine"] == "m1", "temperature"] += 40
    gappy = gappy.drop(index=range(100, 110))  # ten seconds missing in m0
    out = score_frame(det, gappy)
    assert out.series_counts["gaps"] == 1
    assert out.n_rejected == 0
    # The hot machine is not flagged wholesale: per-series scaling absorbed its offset.
    rate = out.scored.groupby("machine")["is_anomaly"].mean()
    assert rate["m1"] < 0.5


def test_arrays_are_one_series_in_row_order():
    t = np.arange(600)
    X = np.c_[np.sin(t / 10), np.cos(t / 10)]
    det = AutoencoderDetector(model="conv1d", window=20, epochs=5, verbose=False).fit(X)
    assert det.score_samples(X[:100]).shape == (100,)


def test_series_models_need_a_window():
    with pytest.raises(ValueError, match="set window"):
        AutoencoderDetector(model="lstm_seq2seq").fit(np.zeros((100, 2)))
    with pytest.raises(ValueError, match="point_reduction"):
        AutoencoderDetector(window=10, point_reduction="median").fit(np.zeros((100, 2)))


def test_score_rows_for_a_series_is_aligned_with_score_frame(conv_detector, incoming_series):
    from anomaly.scoring import score_rows

    frame = pd.concat([incoming_series.iloc[:300], incoming_series.iloc[[10]]])  # one duplicate
    rows = score_rows(conv_detector, frame)
    batch = score_frame(conv_detector, frame)
    assert len(rows) == len(frame) and rows.index.equals(frame.index)
    scored_at = batch.scored["source_row"].to_numpy()
    np.testing.assert_array_equal(
        rows["anomaly_score"].to_numpy()[scored_at], batch.scored["anomaly_score"].to_numpy()
    )
    assert rows["top_feature"].iloc[scored_at].tolist() == batch.scored["top_feature"].tolist()
    rejected_at = batch.rejected["source_row"].to_numpy()
    assert rows["reject_reason"].iloc[rejected_at].tolist() == batch.rejected["reason"].tolist()
    assert rows["anomaly_score"].iloc[rejected_at].isna().all()
    assert not rows["is_anomaly"].iloc[rejected_at].any()
