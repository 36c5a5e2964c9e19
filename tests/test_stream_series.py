"""Series files scored in chunks with look-ahead give what scoring each file whole gives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from anomaly import AutoencoderDetector
from anomaly.data.synthetic import make_series_table
from anomaly.events import scored_events
from anomaly.pipeline import score_files
from anomaly.quarantine import quarantine_path_for
from anomaly.stream_series import plan_series_file, score_series_stream
from anomaly.tracking import LoadedModel

WINDOW = 16


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    train = make_series_table(600, n_series=3, seed=5)
    detector = AutoencoderDetector(
        model="conv1d",
        window=WINDOW,
        time_column="timestamp",
        series_column="machine",
        key_columns=["injected_anomaly"],
        epochs=6,
        batch_size=64,
        learning_rate=3e-3,
        verbose=False,
        device="cpu",
    ).fit(train)
    return LoadedModel(detector, "series-model", "1", "models:/series-model/1")


def _incoming(seed: int, start: str) -> pd.DataFrame:
    """Three interleaved series in time order with what chunk edges must get right: NaN rows,
    a gap (split there), a series that stops half way, and planted anomalies."""
    frame = make_series_table(
        700, n_series=3, anomalies=3, anomaly_length=30, seed=seed, start=start
    )
    frame = frame.sort_values(["timestamp", "machine"], kind="stable").reset_index(drop=True)
    machines = sorted(frame["machine"].unique())
    features = ["flow", "pressure", "temperature", "vibration"]
    rng = np.random.default_rng(seed)
    frame.loc[rng.choice(len(frame), 12, replace=False), features[0]] = np.nan
    first = frame["machine"] == machines[0]
    t0 = frame["timestamp"].min()
    gap = first & frame["timestamp"].between(
        t0 + pd.Timedelta("200min"), t0 + pd.Timedelta("230min")
    )
    stops = (frame["machine"] == machines[1]) & (frame["timestamp"] > t0 + pd.Timedelta("350min"))
    return frame.loc[~gap & ~stops].reset_index(drop=True)


def _stream(model, tmp_path, data, chunk_rows, context=None, state=None, name="s"):
    out = tmp_path / f"{name}.parquet"
    rej = tmp_path / f"{name}.rejects.parquet"
    result, ctx, tracker = score_series_stream(
        model.detector,
        str(data),
        out,
        rej,
        quarantine_path_for(out),
        context,
        state,
        model.name,
        model.version,
        chunk_rows=chunk_rows,
    )
    return result, ctx, tracker


def _same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    for column in want.columns:
        g, w = got[column], want[column]
        if pd.api.types.is_float_dtype(w):
            np.testing.assert_allclose(g.to_numpy(), w.to_numpy(), rtol=1e-5, atol=1e-7)
        else:
            assert g.astype(str).tolist() == w.astype(str).tolist(), column


def _events_sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["series", "start"]).reset_index(drop=True)


@pytest.mark.parametrize("chunk_rows", [97, 400])
def test_chunked_file_scores_as_whole_file(tmp_path, model, chunk_rows):
    folder = tmp_path / "in"
    folder.mkdir()
    frames = [_incoming(6, "2024-01-02"), _incoming(7, "2024-01-03")]
    for i, frame in enumerate(frames):
        frame.to_parquet(folder / f"part{i}.parquet", row_group_size=128)
    want = score_files(model, str(folder))  # every file whole, in memory
    want_events, want_tracker = scored_events(
        want.scored,
        want.feature_errors,
        model.detector.schema_.feature_names,
        "timestamp",
        "machine",
    )

    result, context, tracker = _stream(model, tmp_path, folder, chunk_rows)

    assert result.streamed_files == 2 and result.whole_files == 0
    assert result.n_rows == sum(len(f) for f in frames) == result.n_scored + result.n_rejected
    scored = pq.read_table(result.output).to_pandas()
    rejected = pq.read_table(result.rejects).to_pandas()
    _same(scored, want.scored)
    _same(rejected, want.rejected)
    assert result.n_flagged == want.n_flagged > 0
    assert result.series_counts == want.series_counts
    events = pq.read_table(result.events).to_pandas()
    assert len(events) == len(want_events) > 0
    _same(_events_sorted(events), _events_sorted(want_events))
    assert result.n_events == want_tracker.n_closed
    # The next batch continues from the same points either way.
    whole_context = model.detector.next_context(frames[1], model.detector.next_context(frames[0]))
    order = ["machine", "timestamp"]
    _same(
        context.sort_values(order).reset_index(drop=True),
        whole_context.sort_values(order).reset_index(drop=True),
    )
    assert tracker.to_json() == want_tracker.to_json()


def test_file_out_of_time_order_is_scored_whole(tmp_path, model):
    frame = _incoming(6, "2024-01-02").sample(frac=1.0, random_state=0)
    path = tmp_path / "shuffled.parquet"
    frame.to_parquet(path)
    plan = plan_series_file(model.detector, path)
    assert "not in strict time order" in plan.whole
    result, _, _ = _stream(model, tmp_path, path, 97)
    assert result.whole_files == 1 and result.streamed_files == 0
    want = score_files(model, str(path))
    _same(pq.read_table(result.output).to_pandas(), want.scored)


def test_a_file_missing_a_column_is_quarantined_and_the_next_continues(tmp_path, model):
    folder = tmp_path / "in"
    folder.mkdir()
    good = _incoming(6, "2024-01-02")
    good.to_parquet(folder / "a.parquet")
    good.drop(columns=["flow"]).to_parquet(folder / "b.parquet")
    later = _incoming(7, "2024-01-03")
    later.to_parquet(folder / "c.parquet")
    result, _, _ = _stream(model, tmp_path, folder, 150)
    assert [q.source_file for q in result.quarantined] == [str(folder / "b.parquet")]
    assert "flow" in result.quarantined[0].reason
    assert result.n_rows == len(good) + len(later)
    scored = pq.read_table(result.output).to_pandas()
    assert set(scored["source_file"]) == {str(folder / "a.parquet"), str(folder / "c.parquet")}
    # c continues from a's points: its first rows are scored with a's context, not rejected.
    want = score_files(model, str(folder / "a.parquet"))
    context = model.detector.next_context(good)
    want_c = model.detector.score_samples(later.dropna(), context=context)
    got_c = scored.loc[scored["source_file"] == str(folder / "c.parquet"), "anomaly_score"]
    assert len(got_c) == len(want_c)
    np.testing.assert_allclose(got_c.to_numpy(), want_c, rtol=1e-5)
    assert want.n_scored == (scored["source_file"] == str(folder / "a.parquet")).sum()
