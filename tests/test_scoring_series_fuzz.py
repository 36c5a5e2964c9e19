"""Property: a time-series detector fed a damaged frame accounts for every row or raises a named error.

Frames are slices of a real series table, then damaged at random: rows shuffled, duplicated or
dropped (gaps), timestamps missing or of another type, NaN / inf / huge readings, series shorter
than the window, unknown or missing series ids, columns missing, extra or renamed; the duplicate
and gap policies vary too, and sometimes the previous batch's context is passed.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anomaly import AnomalyError, score_frame

SENSORS = ["flow", "pressure", "temperature", "vibration"]
special = st.sampled_from([np.nan, np.inf, -np.inf, 1e300, -1e300, 0.0])


@st.composite
def damaged(draw, table: pd.DataFrame) -> pd.DataFrame:
    start = draw(st.integers(0, len(table) - 1))
    length = draw(st.sampled_from([0, 1, 5, 15, 16, 17, 40, 90]))
    frame = table.iloc[start : start + length].copy()
    n = len(frame)
    hostile = draw(st.integers(0, 3)) == 0

    def rows(k: int) -> list[int]:
        return draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=k)) if n else []

    if n and draw(st.booleans()):  # duplicated rows (same series and timestamp)
        frame = pd.concat([frame, frame.iloc[rows(6)]])
    if len(frame) and draw(st.booleans()):  # gaps
        frame = frame.drop(frame.index[sorted(set(rows(8)) & set(range(len(frame))))])
    n = len(frame)
    if draw(st.booleans()):  # arrival order is not time order; the index may be anything
        frame = frame.iloc[draw(st.permutations(range(n)))]
    if draw(st.booleans()):
        frame = frame.reset_index(drop=True)
    frame = frame.copy()
    for row in rows(6):
        frame.iloc[row, frame.columns.get_loc(draw(st.sampled_from(SENSORS)))] = draw(special)
    times = draw(st.sampled_from(["datetime"] * 4 + ["nat", "text", "seconds", "garbage"]))
    if times == "nat" and n:
        frame.loc[frame.index[rows(4)], "timestamp"] = pd.NaT
    elif times == "text":
        frame["timestamp"] = frame["timestamp"].astype(str)
    elif times == "seconds":
        seconds = frame["timestamp"].astype("int64") / 1e6
        frame["timestamp"] = seconds.where(np.arange(n) % 7 != 3, np.nan)
    elif times == "garbage":
        frame["timestamp"] = pd.Series(
            draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)), index=frame.index
        )
    machine = draw(st.sampled_from(["kept"] * 5 + ["unknown", "null", "numbers"]))
    if machine == "unknown":
        frame["machine"] = "m9"
    elif machine == "null" and n:
        frame.loc[frame.index[rows(3)], "machine"] = None
    elif machine == "numbers":
        frame["machine"] = np.arange(n) % 2
    if hostile:
        damage = draw(st.sampled_from(["drop", "text", "null", "bool", "extra", "clash"]))
        column = draw(st.sampled_from([*SENSORS, "timestamp", "machine", "injected_anomaly"]))
        if damage == "drop":
            frame = frame.drop(columns=[column])
        elif damage == "text":
            frame[column] = "x"
        elif damage == "null":
            frame[column] = None
        elif damage == "bool":
            frame[column] = True
        elif damage == "extra":
            frame["温度 ß"] = 1.0
        else:
            frame["reason"] = "mine"
    return frame


def policies(detector):
    """The fitted detector under each duplicate and gap policy (the network is shared)."""
    variants = []
    for duplicates, gaps in [("reject", "split"), ("mean", "resample"), ("last", "ignore")]:
        variant = copy.copy(detector)
        variant.duplicate_policy, variant.gap_policy = duplicates, gaps
        variant.series_policy_ = dataclasses.replace(
            detector.series_policy_, duplicates=duplicates, gaps=gaps
        )
        variants.append(variant)
    return variants


@settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_series_scoring_accounts_for_every_row_or_raises_a_named_error(
    fitted_series_detector, series_table, data
):
    detector = data.draw(st.sampled_from(policies(fitted_series_detector)))
    frame = data.draw(damaged(series_table))
    context = None
    if data.draw(st.booleans()):
        before = series_table.iloc[:100]
        context = detector.next_context(before)
    try:
        batch = score_frame(detector, frame, "m", "1", source="batch.parquet", context=context)
    except AnomalyError as error:
        event(f"raised {type(error).__name__}")
        return
    event("scored" if batch.n_scored else "nothing scored")
    assert batch.n_scored + batch.n_rejected == len(frame)
    assert sorted(
        [*batch.scored["source_row"].tolist(), *batch.rejected["source_row"].tolist()]
    ) == list(range(len(frame)))
    assert np.isfinite(batch.scored["anomaly_score"].to_numpy(dtype=float)).all()
    reasons = batch.rejected["reason"]
    assert all(isinstance(r, str) and r.strip() for r in reasons), reasons.tolist()


# Regressions found by the property above.


def test_empty_frame_scores_to_empty_outputs(fitted_series_detector, series_table):
    """Zero rows used to raise TypeError (an empty float mask '&'-ed with a bool one)."""
    batch = score_frame(fitted_series_detector, series_table.iloc[:0], "m", "1")
    assert (batch.n_scored, batch.n_rejected) == (0, 0)


def test_enormous_finite_reading_keeps_scores_finite(fitted_series_detector, series_table):
    """A reading of 1e300 overflowed float32 to inf, and every window over it scored inf."""
    frame = series_table.iloc[:40].copy()
    frame.loc[20, "flow"] = 1e300
    batch = score_frame(fitted_series_detector, frame, "m", "1")
    assert batch.n_scored == 40
    scores = batch.scored["anomaly_score"].to_numpy()
    assert np.isfinite(scores).all()
    assert batch.scored["is_anomaly"].iloc[20]  # still far above the threshold
