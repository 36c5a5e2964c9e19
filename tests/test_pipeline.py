import mlflow
import numpy as np
import pandas as pd
import pytest

from anomaly.config import TrainSettings
from anomaly.data.parquet import write_parquet_atomic
from anomaly.pipeline import rejects_path_for, score, score_files, train, write_outputs
from anomaly.tracking import LoadedModel
from tests.conftest import FAST, KEYS


@pytest.fixture
def landing(tmp_path, incoming_table):
    first, second = incoming_table.iloc[:700].copy(), incoming_table.iloc[700:].copy()
    second.loc[second.index[:4], "vibration"] = np.nan
    write_parquet_atomic(first, tmp_path / "landing" / "a.parquet")
    write_parquet_atomic(second, tmp_path / "landing" / "b.parquet")
    return tmp_path / "landing"


def test_score_files_keeps_every_row_and_names_the_source(fitted_detector, landing, incoming_table):
    model = LoadedModel(fitted_detector, "m", "1", "models:/m/1")
    batch = score_files(model, str(landing))
    assert batch.n_rows == len(incoming_table)
    assert batch.n_rejected == 4
    assert batch.rejected["source_file"].str.endswith("b.parquet").all()
    assert sorted([*batch.scored["reading_id"], *batch.rejected["reading_id"]]) == sorted(
        incoming_table["reading_id"]
    )


def test_a_file_missing_a_column_is_quarantined_with_its_reason(fitted_detector, landing):
    bad = pd.read_parquet(landing / "b.parquet").drop(columns="power")
    write_parquet_atomic(bad, landing / "c.parquet")
    batch = score_files(LoadedModel(fitted_detector, "m", "1", "u"), str(landing))
    (entry,) = batch.quarantined
    assert entry.source_file.endswith("c.parquet") and entry.error == "SchemaError"
    assert entry.reason.startswith("missing column 'power'") and entry.rows == len(bad)
    assert not batch.scored["source_file"].str.endswith("c.parquet").any()
    assert batch.n_rows + batch.n_quarantined_rows == 700 + 2 * len(bad)


def test_rejects_cannot_overwrite_the_output(tmp_path, fitted_detector, landing):
    batch = score_files(LoadedModel(fitted_detector, "m", "1", "u"), str(landing))
    with pytest.raises(ValueError, match="same file"):
        write_outputs(batch, tmp_path / "x.parquet", tmp_path / "x.parquet")


def test_outputs_are_written_beside_each_other(tmp_path, fitted_detector, landing):
    batch = score_files(LoadedModel(fitted_detector, "m", "1", "u"), str(landing))
    out, rej = write_outputs(batch, tmp_path / "out" / "scores.parquet")
    assert rej == rejects_path_for(out) == tmp_path / "out" / "scores.rejects.parquet"
    assert len(pd.read_parquet(out)) + len(pd.read_parquet(rej)) == batch.n_rows
    assert "reason" in pd.read_parquet(rej).columns


def test_train_then_score_through_mlflow(
    tmp_path, normal_table, landing, tracking_config, incoming_table
):
    write_parquet_atomic(normal_table, tmp_path / "train.parquet")
    settings = TrainSettings(
        detector={**FAST, "epochs": 5, "categorical_columns": ["machine_type"], "key_columns": KEYS}
    )
    trained = train(str(tmp_path / "train.parquet"), settings, tracking_config)
    assert trained.model.version == "1" and trained.n_rows == len(normal_table)
    result = score(
        str(landing), "models:/test-detector/latest", str(tmp_path / "s.parquet"), tracking_config
    )
    assert (result.rows_in, result.rows_rejected) == (len(incoming_table), 4)
    assert result.rows_scored + result.rows_rejected == result.rows_in
    assert pd.read_parquet(result.output)["model_version"].eq("1").all()
    assert not result.partial and pd.read_parquet(result.quarantine).empty

    # A file that is not Parquet at all: the rest is scored, the run says what was set aside.
    (landing / "z.parquet").write_bytes(b"PAR1 this is not a Parquet file")
    partial = score(
        str(landing), "models:/test-detector/latest", str(tmp_path / "s.parquet"), tracking_config
    )
    assert partial.partial and partial.quarantined[0][0].endswith("z.parquet")
    assert "cannot read as Parquet" in partial.quarantined[0][1]
    assert (partial.rows_scored, partial.rows_rejected) == (result.rows_scored, 4)
    assert pd.read_parquet(partial.quarantine)["source_file"].str.endswith("z.parquet").all()
    run = mlflow.MlflowClient(tracking_config.tracking_uri).get_run(partial.run_id)
    metrics = run.data.metrics
    assert metrics["files_quarantined"] == 1 and metrics["rows_rejected"] == 4
    assert metrics["rows_in"] == metrics["rows_scored"] + metrics["rows_rejected"]
    assert run.data.tags["anomaly.status"] == "partial_failure"


def test_a_csv_series_scores_with_a_timestamp_time_column(
    tmp_path, fitted_series_detector, series_table
):
    from anomaly.pipeline import score_files_to
    from anomaly.tracking import LoadedModel

    part = series_table.iloc[:200].copy()
    part["timestamp"] = part["timestamp"].dt.strftime("%Y-%m-%d %H:%M:%S")
    (tmp_path / "in").mkdir()
    part.to_csv(tmp_path / "in" / "s.csv", index=False)
    model = LoadedModel(fitted_series_detector, "s", "1", "models:/s/1")
    result = score_files_to(model, str(tmp_path / "in"), tmp_path / "out" / "s.parquet")
    assert not result.quarantined and result.n_scored + result.n_rejected == 200
    scored = pd.read_parquet(tmp_path / "out" / "s.parquet")
    assert pd.api.types.is_datetime64_any_dtype(scored["timestamp"])
