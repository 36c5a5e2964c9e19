import numpy as np
import pandas as pd
import pytest

from anomaly.data.series import (
    SeriesPolicy,
    build_layout,
    context_frame,
    infer_frequency,
    read_series,
    update_context,
)
from anomaly.errors import DataFileError

FEATURES = ("a", "b")


def frame(times, a=None, series=None):
    n = len(times)
    data = {
        "ts": pd.to_datetime(times, unit="s"),
        "a": np.arange(n, dtype=float) if a is None else a,
        "b": np.arange(n, dtype=float) * 10,
    }
    if series is not None:
        data["id"] = series
    return pd.DataFrame(data)


def policy(**kw):
    base = {"time_column": "ts", "series_column": None, "features": FEATURES, "frequency": 1.0}
    return SeriesPolicy(**{**base, **kw})


def test_unsorted_rows_are_sorted_counted_and_mapped_back():
    df = frame([0, 2, 1, 3])  # rows 1 and 2 swapped
    layout = build_layout(df, policy())
    assert layout.counts["unsorted_rows"] == 1
    assert layout.times.tolist() == [0, 1, 2, 3]
    # Each input row still finds its own values through row_point.
    np.testing.assert_array_equal(layout.values[layout.row_point, 0], df["a"].to_numpy())


def test_duplicates_rejected_with_reason_by_default():
    df = frame([0, 1, 1, 2])
    layout = build_layout(df, policy())
    assert layout.counts["duplicate_rows"] == 1
    assert layout.row_point[2] == -1
    assert "duplicate timestamp" in layout.reasons[2] and "kept row 1" in layout.reasons[2]
    assert (layout.reasons[[0, 1, 3]] == "").all()
    assert len(layout.times) == 3


@pytest.mark.parametrize(("how", "expected"), [("first", 1.0), ("last", 2.0), ("mean", 1.5)])
def test_duplicates_merged_into_one_point(how, expected):
    df = frame([0, 1, 1, 2])
    layout = build_layout(df, policy(duplicates=how))
    assert (layout.reasons == "").all()
    assert layout.row_point[1] == layout.row_point[2]  # both rows get the merged point
    assert layout.values[layout.row_point[1], 0] == expected
    assert layout.counts["duplicate_rows"] == 1


def test_gap_splits_the_series_by_default():
    df = frame([0, 1, 2, 3, 10, 11, 12, 13])
    layout = build_layout(df, policy(), window=3)
    assert layout.counts["gaps"] == 1
    assert layout.segments == [(0, 4), (4, 8)]


def test_gap_resampled_with_linear_fill_and_inserted_points_never_output():
    df = frame([0, 1, 4, 5], a=np.array([0.0, 1.0, 4.0, 5.0]))
    layout = build_layout(df, policy(gaps="resample"), window=2)
    assert layout.counts["points_inserted"] == 2
    assert layout.times.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(layout.values[:, 0], [0, 1, 2, 3, 4, 5])
    assert layout.is_inserted.tolist() == [False, False, True, True, False, False]
    assert sorted(layout.row_point.tolist()) == [0, 1, 4, 5]


def test_gap_ffill():
    df = frame([0, 1, 4], a=np.array([0.0, 1.0, 4.0]))
    layout = build_layout(df, policy(gaps="resample", gap_fill="ffill"))
    np.testing.assert_allclose(layout.values[:, 0], [0, 1, 1, 1, 4])


def test_stretch_shorter_than_window_is_rejected_with_reason():
    df = frame([0, 1, 2, 10, 11, 12, 13, 14])
    layout = build_layout(df, policy(), window=4)
    assert layout.counts["short_stretch_rows"] == 3
    assert (layout.row_point[:3] == -1).all()
    assert "fewer than the window of 4" in layout.reasons[0]
    assert (layout.reasons[3:] == "").all()


def test_invalid_rows_and_missing_times_get_reasons():
    df = frame([0, 1, 2, 3])
    df.loc[1, "ts"] = pd.NaT
    invalid = np.array(["", "", "missing or non-finite value in a", ""], dtype=object)
    layout = build_layout(df, policy(), invalid=invalid)
    assert "time 'ts' is missing" in layout.reasons[1]
    assert layout.reasons[2].startswith("missing or non-finite")
    assert (layout.row_point[[1, 2]] == -1).all()


def test_series_are_kept_apart_and_frequency_inferred():
    df = frame([0, 2, 4, 0, 2, 4], series=["x", "x", "x", "y", "y", "y"])
    p = policy(series_column="id", frequency=None)
    assert infer_frequency(df, p) == 2.0
    layout = build_layout(df, p)
    assert layout.segments == [(0, 3), (3, 6)]
    assert layout.series.tolist() == ["x"] * 3 + ["y"] * 3


def test_context_is_put_in_front_and_only_points_before_the_batch_count():
    p = policy()
    first = frame(range(0, 10))
    layout = build_layout(first, p, window=4)
    ctx = context_frame(layout, p, window=4, datetimes=True)
    assert len(ctx) == 3 and ctx["a"].tolist() == [7.0, 8.0, 9.0]
    second = frame(range(10, 15), a=np.arange(10, 15, dtype=float))
    layout2 = build_layout(second, p, context=ctx, window=4)
    assert layout2.counts["context_points"] == 3
    assert layout2.values[:3, 0].tolist() == [7.0, 8.0, 9.0]
    assert layout2.segments == [(0, 8)]
    # A rerun of the same batch with the context saved after it finds the same context.
    ctx2 = update_context(ctx, context_frame(layout2, p, window=4, datetimes=True), p)
    rerun = build_layout(second, p, context=ctx2, window=4)
    np.testing.assert_array_equal(rerun.values, layout2.values)


def test_update_context_keeps_other_series():
    p = policy(series_column="id")
    old = pd.DataFrame(
        {"id": ["x", "y"], "ts": pd.to_datetime([0, 0], unit="s"), "a": [1.0, 2.0], "b": [0.0, 0.0]}
    )
    new = pd.DataFrame({"id": ["x"], "ts": pd.to_datetime([5], unit="s"), "a": [9.0], "b": [0.0]})
    merged = update_context(old, new, p)
    assert sorted(zip(merged["id"], merged["a"], strict=True)) == [("x", 9.0), ("y", 2.0)]


def test_read_semicolon_csv(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("datetime;x;y\n2020-01-01 00:00:00;1.5;2\n2020-01-01 00:00:01;1.6;3\n")
    df = read_series(path)
    assert list(df.columns) == ["datetime", "x", "y"]
    assert df["x"].tolist() == [1.5, 1.6]


def test_csv_time_column_becomes_timestamps(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("datetime;x\n2020-01-01 00:00:00;1.5\n2020-01-01 00:00:01;1.6\n")
    df = read_series(path, time_column="datetime")
    assert pd.api.types.is_datetime64_any_dtype(df["datetime"])
    assert df["datetime"].iloc[1] == pd.Timestamp("2020-01-01 00:00:01")
    numeric = tmp_path / "n.csv"
    numeric.write_text("t,x\n0,1.5\n1,1.6\n")
    assert read_series(numeric, time_column="t")["t"].tolist() == [0, 1]  # positions stay numbers


def test_csv_time_column_that_is_not_a_time_names_column_row_and_value(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("datetime,x\n2020-01-01 00:00:00,1.5\nsoon,1.6\n2020-01-01 00:00:02,1\n")
    with pytest.raises(DataFileError, match=r"column 'datetime' holds 1 value.*row 1, 'soon'"):
        read_series(path, time_column="datetime")
