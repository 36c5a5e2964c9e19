import json
from pathlib import Path

import pandas as pd

from anomaly.data.parquet import write_parquet_atomic
from anomaly.data.synthetic import make_sensor_table
from anomaly.landing import (
    LEDGER_NAME,
    LandingFile,
    Ledger,
    output_paths,
    pending_files,
    score_landing_file,
)
from anomaly.scoring import score_frame
from anomaly.tracking import LoadedModel


def landing_file(name: str) -> LandingFile:
    return LandingFile(Path(name), name, 10, 1, name * 8)


def test_two_runs_recording_at_once_keep_each_others_entries(tmp_path):
    # Both runs read the ledger before either records: the second write must not drop the first.
    first, second = Ledger(tmp_path), Ledger(tmp_path)
    first.record(landing_file("a.parquet"), {"rows_in": 1})
    second.record(landing_file("b.parquet"), {"rows_in": 2})
    names = [e["name"] for e in json.loads((tmp_path / LEDGER_NAME).read_text())["files"]]
    assert sorted(names) == ["a.parquet", "b.parquet"]
    assert Ledger(tmp_path).is_done(landing_file("a.parquet"))
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_landing_file_streams_to_the_same_rows_as_scoring_it_in_memory(
    tmp_path, tracking_config, fitted_detector
):
    model = LoadedModel(fitted_detector, "test-detector", "1", "models:/test-detector/1")
    table = make_sensor_table(3000, anomaly_fraction=0.05, seed=41, first_id=0)
    table.loc[[5, 17], "temperature"] = float("nan")
    path = tmp_path / "landing" / "a.parquet"
    write_parquet_atomic(table, path)
    out_dir = tmp_path / "out"
    [file] = pending_files(path.parent, Ledger(out_dir), min_age_seconds=0)

    result = score_landing_file(model, file, out_dir, tracking_config)

    expected = score_frame(fitted_detector, table, "test-detector", "1", source=str(path))
    out, rej = output_paths(out_dir, file)
    scored, rejected = pd.read_parquet(out), pd.read_parquet(rej)
    assert len(scored) + len(rejected) == len(table) == result.rows_in
    assert sorted(rejected["reading_id"]) == sorted(table["reading_id"].iloc[[5, 17]])
    merged = scored.merge(expected.scored, on="reading_id", suffixes=("", "_mem"))
    assert len(merged) == len(scored) == expected.n_scored
    assert (merged["anomaly_score"] == merged["anomaly_score_mem"]).all()
    assert result.report is not None and result.report.rows_scored == expected.n_scored
    assert result.report.rows_flagged == expected.n_flagged
    # Only the two outputs, the ledger and its lock: no per-file quarantine list beside them.
    assert sorted(p.name for p in out_dir.iterdir() if not p.name.startswith(".")) == sorted(
        [out.name, rej.name, LEDGER_NAME]
    )


def test_a_landing_file_that_cannot_be_read_leaves_no_outputs(
    tmp_path, tracking_config, fitted_detector
):
    model = LoadedModel(fitted_detector, "test-detector", "1", "models:/test-detector/1")
    path = tmp_path / "landing" / "broken.parquet"
    path.parent.mkdir()
    path.write_bytes(b"half a file")
    out_dir = tmp_path / "out"
    [file] = pending_files(path.parent, Ledger(out_dir), min_age_seconds=0)

    result = score_landing_file(model, file, out_dir, tracking_config)

    assert result.quarantined and result.quarantined.startswith("cannot read as Parquet")
    assert [p.name for p in out_dir.iterdir() if not p.name.startswith(".")] == [LEDGER_NAME]
    assert Ledger(out_dir).is_done(file)
