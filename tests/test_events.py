"""Anomaly events: grouping flagged points of series, min_duration, merge_gap, across batches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from anomaly.events import EventSettings, EventTracker, event_columns, find_events

FEATURES = ("a", "b", "c", "d")


def _points(flags: str, series: str | None = None, start: int = 0):
    """Arrays for a string like '..##.#..' (# = flagged); scores rise with position in a run."""
    flagged = np.array([c == "#" for c in flags])
    n = len(flags)
    scores = np.where(flagged, 2.0, 0.5) + np.arange(n) * 1e-3
    p = np.where(flagged, 0.001, 0.5)
    errors = np.tile([0.1, 0.6, 0.2, 0.1], (n, 1))
    times = pd.date_range("2024-01-01", periods=n, freq="1s") + pd.Timedelta(seconds=start)
    ids = None if series is None else np.full(n, series, dtype=object)
    return ids, np.asarray(times), scores, p, flagged, errors


def test_consecutive_flagged_points_form_one_event_each_run():
    ids, times, scores, p, flagged, errors = _points("..###...##.#")
    events = find_events(ids, times, scores, p, flagged, errors, FEATURES)
    assert list(events.columns) == event_columns()
    assert len(events) == 3
    assert events["n_points"].tolist() == [3, 2, 1]
    assert events["n_flagged"].tolist() == [3, 2, 1]
    assert events["start"].tolist() == [
        pd.Timestamp(times[2]),
        pd.Timestamp(times[8]),
        pd.Timestamp(times[11]),
    ]
    assert events["end"].tolist() == [
        pd.Timestamp(times[4]),
        pd.Timestamp(times[9]),
        pd.Timestamp(times[11]),
    ]
    assert events["peak_at"].iloc[0] == pd.Timestamp(times[4])  # the largest score of the run
    assert events["peak_score"].iloc[0] == pytest.approx(2.004)
    assert (events["min_p_value"] == 0.001).all()
    assert events["series"].isna().all()  # one series: no id
    # The last run ends the batch, so the next batch may continue it: it is listed as open.
    assert events["open"].tolist() == [False, False, True]
    # Top features by share of error: b (0.6), c (0.2), then a or d (0.1, the first by order).
    first = events.iloc[0]
    assert (first["feature_1"], first["feature_2"], first["feature_3"]) == ("b", "c", "a")
    assert first["share_1"] == pytest.approx(0.6) and first["share_2"] == pytest.approx(0.2)


def test_min_duration_drops_short_runs():
    ids, times, scores, p, flagged, errors = _points("#.##.####.")
    events = find_events(
        ids, times, scores, p, flagged, errors, FEATURES, EventSettings(min_duration=3)
    )
    assert events["n_points"].tolist() == [4]


def test_merge_gap_bridges_short_quiet_stretches():
    ids, times, scores, p, flagged, errors = _points("##..#...#.")
    assert len(find_events(ids, times, scores, p, flagged, errors, FEATURES)) == 3
    merged = find_events(
        ids, times, scores, p, flagged, errors, FEATURES, EventSettings(merge_gap=2)
    )
    # 2 quiet points are bridged, 3 are not.
    assert merged["n_points"].tolist() == [5, 1]
    assert merged["n_flagged"].tolist() == [3, 1]
    every = find_events(
        ids, times, scores, p, flagged, errors, FEATURES, EventSettings(merge_gap=3)
    )
    assert every["n_points"].tolist() == [9]


def test_an_event_split_across_two_batches_is_one_event():
    whole = _points("...#####....")
    one = find_events(*whole, FEATURES)
    assert len(one) == 1

    tracker = EventTracker(FEATURES)
    first = tracker.update(*(a[:6] if a is not None else None for a in whole))
    assert len(first) == 1 and first["open"].all() and tracker.n_closed == 0 and tracker.n_open == 1
    state = tracker.to_json()
    json.loads(state)  # plain JSON, to keep with the context file

    resumed = EventTracker(FEATURES, state=state)
    second = resumed.update(*(a[6:] if a is not None else None for a in whole))
    assert len(second) == 1 and not second["open"].any()
    assert resumed.n_closed == 1 and resumed.n_open == 0
    assert tracker.n_closed + resumed.n_closed == 1  # counted once over the two runs
    assert second["event_id"].iloc[0] == first["event_id"].iloc[0]
    # The closed record has the whole extent and aggregates of the unsplit event.
    columns = [c for c in event_columns() if c != "open"]
    pd.testing.assert_frame_equal(second[columns], one[columns])


def test_merge_gap_reaches_over_the_batch_boundary():
    whole = _points("..##..##...", series="m1")
    settings = EventSettings(merge_gap=2)
    tracker = EventTracker(FEATURES, settings)
    a = tracker.update(*(x[:5] for x in whole))  # ends "..##." : 1 quiet point, still open
    b = EventTracker(FEATURES, settings, state=tracker.to_json()).update(*(x[5:] for x in whole))
    assert a["open"].tolist() == [True]
    assert b["open"].tolist() == [False] and b["n_points"].tolist() == [6]
    assert b["event_id"].tolist() == a["event_id"].tolist()


def test_open_event_closes_in_a_quiet_next_batch():
    whole = _points("..###.....", series="m1")
    tracker = EventTracker(FEATURES, EventSettings(merge_gap=2))
    assert tracker.update(*(x[:5] for x in whole))["open"].tolist() == [True]
    after = EventTracker(FEATURES, EventSettings(merge_gap=2), state=tracker.to_json())
    closed = after.update(*(x[5:] for x in whole))
    assert closed["open"].tolist() == [False] and closed["n_points"].tolist() == [3]


def test_interleaved_series_are_grouped_separately():
    m1 = _points(".###..#.", series="m1")
    m2 = _points("##...##", series="m2")
    # Rows interleaved as a file with several machines would hold them, in shuffled order.
    stacked = [np.concatenate([x, y]) for x, y in zip(m1, m2, strict=True)]
    order = np.random.default_rng(0).permutation(len(stacked[0]))
    shuffled = [x[order] for x in stacked]
    events = find_events(*shuffled, FEATURES)
    got = sorted((r.series, r.n_points, r.open) for r in events.itertuples())
    assert got == [("m1", 1, False), ("m1", 3, False), ("m2", 2, False), ("m2", 2, True)]
    # With a merge gap of 1, m1's last run (1 quiet point after it) may go on as well.
    open_ = find_events(*shuffled, FEATURES, EventSettings(merge_gap=1))
    assert sorted(open_.loc[open_["open"], "series"]) == ["m1", "m2"]


def test_positions_without_times_continue_over_batches():
    ids, _, scores, p, flagged, errors = _points("..##")
    tracker = EventTracker(FEATURES, EventSettings(merge_gap=1))
    first = tracker.update(ids, None, scores, p, flagged, errors)
    assert first[["start", "end"]].values.tolist() == [[2, 3]]
    second = EventTracker(FEATURES, EventSettings(merge_gap=1), state=tracker.to_json()).update(
        ids,
        None,
        scores,
        p,
        ~flagged,
        errors,  # "##.." : continues the event at 4, 5
    )
    assert second[["start", "end", "n_points"]].values.tolist() == [[2, 5, 4]]


def test_state_for_other_features_is_refused():
    tracker = EventTracker(FEATURES)
    with pytest.raises(ValueError, match="features"):
        EventTracker(("x", "y"), state=tracker.to_json())
    with pytest.raises(ValueError, match="min_duration"):
        EventSettings(min_duration=0)
