"""Anomaly events of a time-series scoring run, through score_files_to: file, counts, batches."""

from __future__ import annotations

import pandas as pd
import pytest

from anomaly import AutoencoderDetector
from anomaly.data.paths import output_role
from anomaly.data.synthetic import make_series_table
from anomaly.errors import OutputPathError
from anomaly.events import event_columns
from anomaly.pipeline import SeriesStreamResult, events_path_for, score_files_to
from anomaly.tracking import LoadedModel

# The spike planted by make_series_table(800, anomalies=2, anomaly_length=40) in each series
# runs 06:40-07:19 after the start; the split falls inside it.
START = pd.Timestamp("2024-01-02")
SPLIT = START + pd.Timedelta("7min")


@pytest.fixture(scope="module")
def model() -> LoadedModel:
    train = make_series_table(800, n_series=2, seed=5)
    detector = AutoencoderDetector(
        model="conv1d",
        window=16,
        time_column="timestamp",
        series_column="machine",
        key_columns=["injected_anomaly"],
        epochs=15,
        batch_size=64,
        learning_rate=3e-3,
        verbose=False,
        device="cpu",
    ).fit(train)
    return LoadedModel(detector, "series-model", "1", "models:/series-model/1")


@pytest.fixture(scope="module")
def incoming() -> pd.DataFrame:
    return make_series_table(
        800, n_series=2, anomalies=2, anomaly_length=40, seed=6, start="2024-01-02"
    )


def _folder(tmp_path, name, frame):
    folder = tmp_path / name
    folder.mkdir()
    frame.to_parquet(folder / "part.parquet")
    return folder


def test_events_are_written_beside_the_output_and_counted(tmp_path, model, incoming):
    data = _folder(tmp_path, "in", incoming)
    out = tmp_path / "out" / "scores.parquet"
    result = score_files_to(model, str(data), out, context_path=tmp_path / "out" / "ctx.parquet")
    assert isinstance(result, SeriesStreamResult)
    assert result.events == events_path_for(out) == tmp_path / "out" / "scores.events.parquet"
    assert output_role(result.events) == "events"  # later input listings pass over it
    events = pd.read_parquet(result.events)
    assert list(events.columns) == event_columns()
    assert result.n_events == int((~events["open"]).sum())
    assert result.n_open_events == int(events["open"].sum())
    # Every flagged point of the output lies in exactly one event of its series.
    scored = pd.read_parquet(out)
    flagged = scored.loc[scored["is_anomaly"]]
    for row in flagged.itertuples():
        inside = events.loc[
            (events["series"] == row.machine)
            & (events["start"] <= row.timestamp)
            & (events["end"] >= row.timestamp)
        ]
        assert len(inside) == 1
    assert events["n_flagged"].sum() == len(flagged)
    # The planted spike (on pressure) is one long event per series, led by pressure.
    spikes = events.loc[events["n_points"] >= 10]
    for machine in ("m0", "m1"):
        spike = spikes.loc[(spikes["series"] == machine) & (spikes["start"] < SPLIT)]
        assert len(spike) == 1 and spike["feature_1"].iloc[0] == "pressure"
        assert spike["start"].iloc[0] < SPLIT < spike["end"].iloc[0]


def test_an_event_across_two_runs_is_one_event(tmp_path, model, incoming):
    first = _folder(tmp_path, "in1", incoming.loc[incoming["timestamp"] < SPLIT])
    second = _folder(tmp_path, "in2", incoming.loc[incoming["timestamp"] >= SPLIT])
    context = tmp_path / "out" / "ctx.parquet"
    r1 = score_files_to(model, str(first), tmp_path / "out" / "a.parquet", context_path=context)
    r2 = score_files_to(model, str(second), tmp_path / "out" / "b.parquet", context_path=context)
    e1, e2 = pd.read_parquet(r1.events), pd.read_parquet(r2.events)
    for machine in ("m0", "m1"):
        # The spike is still going at the end of the first run: listed as open ...
        open_ = e1.loc[(e1["series"] == machine) & e1["open"]]
        assert len(open_) == 1 and open_["end"].iloc[0] == SPLIT - pd.Timedelta("1s")
        # ... and closed by the second, under the same id, with its whole extent.
        closed = e2.loc[e2["event_id"] == open_["event_id"].iloc[0]]
        assert len(closed) == 1 and not closed["open"].iloc[0]
        assert closed["start"].iloc[0] == open_["start"].iloc[0]
        assert closed["end"].iloc[0] > SPLIT
        assert closed["n_points"].iloc[0] > open_["n_points"].iloc[0]
        # Over the two runs the closed events covering the split are one.
        both = pd.concat([e1.loc[~e1["open"]], e2.loc[~e2["open"]]])
        covering = both.loc[
            (both["series"] == machine) & (both["start"] < SPLIT) & (both["end"] >= SPLIT)
        ]
        assert len(covering) == 1
    assert r1.n_events + r2.n_events == (~e1["open"]).sum() + (~e2["open"]).sum()
    assert set(e1.loc[~e1["open"], "event_id"]).isdisjoint(e2["event_id"])


def test_events_path_takes_part_in_the_output_path_check(tmp_path, model, incoming):
    folder = tmp_path / "in"
    folder.mkdir()
    incoming.to_parquet(folder / "scores.events.parquet")
    with pytest.raises(OutputPathError, match="events path"):
        score_files_to(model, str(folder), folder / "scores.parquet")
