import numpy as np
import pandas as pd
import pytest
import torch

from anomaly.errors import SchemaError
from anomaly.scoring import (
    reduce_errors,
    score_frame,
    score_rows,
    scoreable_scores,
    source_matrix,
    top_contributors,
)
from tests.conftest import KEYS


def test_reductions_by_hand():
    errors = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    assert reduce_errors(errors, "mean").tolist() == [2.0, 0.0]
    assert reduce_errors(errors, "max").tolist() == [3.0, 0.0]
    assert reduce_errors(torch.ones(2, 2, 3), "mean").shape == (2,)
    with pytest.raises(ValueError, match="reduction"):
        reduce_errors(errors, "median")


def test_errors_are_summed_back_onto_input_columns():
    errors = torch.tensor([[1.0, 0.5, 0.25, 0.25]])
    matrix = source_matrix(np.array([0, 1, 1, 2]), 3)
    assert matrix.shape == (4, 3)
    assert (errors @ matrix).tolist() == [[1.0, 0.75, 0.25]]


def test_top_contributor_and_share():
    names, share = top_contributors(np.array([[1.0, 3.0], [2.0, 0.0], [0.0, 0.0]]), ["a", "b"])
    assert names.tolist() == ["b", "a", "a"]
    np.testing.assert_allclose(share, [0.75, 1.0, 0.0])


def with_holes(table):
    holed = table.copy()
    holed.loc[holed.index[3], "pressure"] = np.nan
    holed.loc[holed.index[7], "rpm"] = -np.inf
    holed.loc[holed.index[9], "machine_type"] = pd.NA
    return holed


def test_reject_policy_keeps_row_counts_whole(fitted_detector, incoming_table):
    batch = score_frame(fitted_detector, with_holes(incoming_table), "m", "3", source="in.parquet")
    assert batch.n_scored + batch.n_rejected == len(incoming_table)
    assert batch.n_rejected == 3
    assert (
        batch.rejected["reading_id"].tolist()
        == incoming_table["reading_id"].iloc[[3, 7, 9]].tolist()
    )
    assert batch.rejected["reason"].tolist() == [
        "missing or non-finite value in pressure",
        "missing or non-finite value in rpm",
        "missing or non-finite value in machine_type",
    ]
    assert (batch.rejected["source_file"] == "in.parquet").all()
    assert list(batch.scored.columns) == [
        *KEYS,
        "anomaly_score",
        "p_value",
        "is_anomaly",
        "threshold",
        "model_name",
        "model_version",
        "top_feature",
        "top_feature_share",
        "out_of_range",
        "duplicate_of_row",
        "source_row",
        "source_file",
    ]
    # Every input row is traceable to its position, scored or not.
    positions = sorted([*batch.scored["source_row"], *batch.rejected["source_row"]])
    assert positions == list(range(len(incoming_table)))
    assert batch.rejected["source_row"].tolist() == [3, 7, 9]
    assert batch.scored["model_version"].eq("3").all()
    assert batch.scored["is_anomaly"].sum() == batch.n_flagged


def test_impute_policy_scores_every_row(fitted_detector, incoming_table):
    imputing = fitted_detector.set_params(nan_policy="impute")
    try:
        batch = score_frame(imputing, with_holes(incoming_table))
    finally:
        fitted_detector.set_params(nan_policy="reject")
    assert batch.n_scored == len(incoming_table) and batch.n_rejected == 0
    assert np.isfinite(batch.scored["anomaly_score"]).all()


def test_score_rows_is_aligned_with_input(fitted_detector, incoming_table):
    shuffled = with_holes(incoming_table).sample(frac=1.0, random_state=0)
    rows = score_rows(fitted_detector, shuffled)
    assert rows.index.equals(shuffled.index)
    clean = shuffled[rows["reject_reason"] == ""]
    np.testing.assert_allclose(
        rows.loc[clean.index, "anomaly_score"], fitted_detector.score_samples(clean)
    )
    assert rows["anomaly_score"].isna().sum() == 3


def test_top_feature_points_at_the_broken_sensor(fitted_detector, normal_table):
    rows = normal_table.head(50).copy()
    rows["voltage"] = 0.0  # a dead sensor
    out = score_frame(fitted_detector, rows).scored
    assert (out["top_feature"] == "voltage").all()
    assert out["is_anomaly"].all()


def test_missing_key_column_names_column_and_file(fitted_detector, incoming_table):
    with pytest.raises(SchemaError, match=r"batch\.parquet: missing key column 'timestamp'"):
        score_frame(
            fitted_detector, incoming_table.drop(columns="timestamp"), source="batch.parquet"
        )


def test_empty_batch_and_all_rejected_batch_flow_through(fitted_detector, incoming_table):
    empty = score_frame(fitted_detector, incoming_table.iloc[:0])
    assert (empty.n_scored, empty.n_rejected) == (0, 0)
    assert "anomaly_score" in empty.scored.columns
    assert fitted_detector.score_samples(incoming_table.iloc[:0]).shape == (0,)
    dead = score_frame(fitted_detector, incoming_table.assign(rpm=np.nan))
    assert (dead.n_scored, dead.n_rejected) == (0, len(incoming_table))
    assert (dead.rejected["reason"] == "missing or non-finite value in rpm").all()


def test_extra_columns_are_ignored(fitted_detector, incoming_table):
    batch = score_frame(fitted_detector, incoming_table.assign(unrelated=1.0))
    np.testing.assert_array_equal(
        batch.scored["anomaly_score"],
        score_frame(fitted_detector, incoming_table).scored["anomaly_score"],
    )


def test_input_columns_that_outputs_would_overwrite_are_refused(
    fitted_detector, incoming_table, normal_table
):
    with pytest.raises(SchemaError, match=r"\['reason'\] would be overwritten"):
        score_frame(fitted_detector, incoming_table.assign(reason="x"))
    from anomaly import AutoencoderDetector

    with pytest.raises(
        SchemaError, match=r"\['threshold'\] have the name of a column the scored output adds"
    ):
        AutoencoderDetector(key_columns=["threshold"]).fit(normal_table.assign(threshold=1.0))


def test_values_far_outside_the_training_range_are_scored_and_named(
    fitted_detector, normal_table, incoming_table
):
    spec = {c.name: c for c in fitted_detector.schema_.features}["temperature"]
    assert spec.low == normal_table["temperature"].min()
    assert spec.high == normal_table["temperature"].max()
    span = spec.high - spec.low
    frame = incoming_table.iloc[:6].copy()
    frame["temperature"] = [
        spec.high,  # the largest normal value: in range
        spec.high + 0.9 * span,  # a new extreme, but within one span: in range
        spec.high + 1.1 * span,
        spec.low - 50 * span,
        1e300,
        frame["temperature"].iloc[5],
    ]
    frame.loc[frame.index[4], "vibration"] = 1e6
    batch = score_frame(fitted_detector, frame)
    assert batch.n_scored == 6 and batch.n_rejected == 0  # scored, never rejected
    assert batch.scored["out_of_range"].tolist() == [
        pd.NA,
        pd.NA,
        "temperature",
        "temperature",
        "temperature, vibration",
        pd.NA,
    ]
    # so far out that the model cannot reconstruct them: flagged as well
    assert batch.scored["is_anomaly"].iloc[[3, 4]].all()
    # the same column in the row-aligned output the pyfunc model returns
    assert score_rows(fitted_detector, frame)["out_of_range"].iloc[2] == "temperature"


def test_duplicate_keys_are_scored_and_point_at_the_first_row(fitted_detector, incoming_table):
    frame = incoming_table.iloc[:8].copy()
    frame.iloc[5, frame.columns.get_loc("reading_id")] = frame["reading_id"].iloc[2]
    frame.iloc[5, frame.columns.get_loc("timestamp")] = frame["timestamp"].iloc[2]
    frame.iloc[7] = frame.iloc[2]  # a whole row delivered twice
    batch = score_frame(fitted_detector, frame)
    assert batch.n_scored == 8  # nothing is dropped or rejected for it
    assert batch.scored["duplicate_of_row"].tolist() == [pd.NA] * 5 + [2, pd.NA, 2]
    # same key, same values: the same score
    assert batch.scored["anomaly_score"].iloc[7] == batch.scored["anomaly_score"].iloc[2]


@pytest.mark.parametrize("kind", ["table", "series"])
def test_scoreable_scores_are_the_scored_rows_of_score_frame(
    kind, fitted_detector, incoming_table, fitted_series_detector, series_table
):
    # The gate scores its hold-out through scoreable_scores: the same rows and scores as the
    # output path, without building outputs.
    if kind == "table":
        detector, frame = fitted_detector, with_holes(incoming_table)
    else:
        detector, frame = fitted_series_detector, series_table.copy()
        frame.loc[frame.index[5], "pressure"] = np.inf
        frame = pd.concat([frame, frame.iloc[[10]]])  # a repeated timestamp is set aside
    scores, ok = scoreable_scores(detector, frame)
    batch = score_frame(detector, frame)
    assert batch.n_rejected > 0
    assert ok.sum() == batch.n_scored == len(scores)
    np.testing.assert_array_equal(np.flatnonzero(ok), batch.scored["source_row"].to_numpy())
    np.testing.assert_array_equal(scores, batch.scored["anomaly_score"].to_numpy())
