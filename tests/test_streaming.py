import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anomaly.data.parquet import read_table
from anomaly.pipeline import score_files_to
from anomaly.scoring import score_frame
from anomaly.streaming import _ScoreSample, prefetch, score_parquet
from anomaly.tracking import LoadedModel


def damaged(table: pd.DataFrame) -> pd.DataFrame:
    """The table with rows that must be rejected: NaN, inf and a missing category."""
    frame = table.copy()
    frame.loc[frame.index[3], "vibration"] = np.nan
    frame.loc[frame.index[10], "power"] = np.inf
    frame.loc[frame.index[11], "temperature"] = -np.inf
    frame["machine_type"] = frame["machine_type"].astype(object)
    frame.loc[frame.index[500], "machine_type"] = None
    return frame


def write_row_groups(frame: pd.DataFrame, path, sizes: list[int]) -> None:
    """Write ``frame`` as row groups of exactly ``sizes`` rows (0 allowed) in one file."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    with pq.ParquetWriter(path, table.schema) as writer:
        start = 0
        for size in sizes:
            writer.write_table(table.slice(start, size), row_group_size=max(size, 1))
            start += size
    assert start == len(frame)


def assert_same_output(streamed: pd.DataFrame, in_memory: pd.DataFrame) -> None:
    """Same rows in the same order, same values; scores bit for bit."""
    assert list(streamed.columns) == list(in_memory.columns)
    assert len(streamed) == len(in_memory)
    for column in streamed.columns:
        left, right = streamed[column].to_numpy(), in_memory[column].to_numpy()
        if column in {"anomaly_score", "p_value", "top_feature_share", "threshold"}:
            np.testing.assert_array_equal(left.astype(float), right.astype(float), err_msg=column)
        else:
            assert list(pd.Series(left).astype(str)) == list(pd.Series(right).astype(str)), column


def test_streamed_scores_equal_in_memory_scores(tmp_path, fitted_detector, incoming_table):
    frame = damaged(incoming_table)
    path = tmp_path / "in.parquet"
    frame.to_parquet(path, row_group_size=300)
    result = score_parquet(
        fitted_detector,
        path,
        tmp_path / "s.parquet",
        tmp_path / "r.parquet",
        "m",
        "3",
        batch_rows=128,
    )
    expected = score_frame(fitted_detector, read_table(path), "m", "3", source=str(path))

    assert (result.n_rows, result.n_rejected) == (len(frame), 4)
    assert result.n_scored == expected.n_scored and result.n_flagged == expected.n_flagged
    assert_same_output(pd.read_parquet(tmp_path / "s.parquet"), expected.scored)
    assert_same_output(pd.read_parquet(tmp_path / "r.parquet"), expected.rejected)
    np.testing.assert_array_equal(np.sort(result.scores), np.sort(expected.scores))


def test_many_odd_row_groups_are_scored_completely(tmp_path, fitted_detector, incoming_table):
    frame = damaged(incoming_table).iloc[:1200].reset_index(drop=True)
    sizes = [1, 7, 0, 1000, 1, 0, 191]
    path = tmp_path / "odd.parquet"
    write_row_groups(frame, path, sizes)
    groups = pq.ParquetFile(path).metadata
    assert [groups.row_group(i).num_rows for i in range(groups.num_row_groups)] == sizes

    result = score_parquet(
        fitted_detector, path, tmp_path / "s.parquet", tmp_path / "r.parquet", batch_rows=64
    )
    scored, rejected = (
        pd.read_parquet(tmp_path / "s.parquet"),
        pd.read_parquet(tmp_path / "r.parquet"),
    )
    assert result.n_rows == len(scored) + len(rejected) == len(frame)
    assert (result.n_scored, result.n_rejected) == (len(scored), len(rejected)) == (1196, 4)
    # every row exactly once, at its own position
    positions = np.sort(np.concatenate([scored["source_row"], rejected["source_row"]]))
    np.testing.assert_array_equal(positions, np.arange(len(frame)))
    np.testing.assert_array_equal(
        frame["reading_id"].to_numpy()[scored["source_row"]], scored["reading_id"]
    )
    expected = score_frame(fitted_detector, frame, source=str(path))
    assert_same_output(scored, expected.scored)
    assert_same_output(rejected, expected.rejected)


def test_duplicate_keys_are_found_across_batches_but_not_across_files(
    tmp_path, fitted_detector, incoming_table
):
    folder = tmp_path / "in"
    folder.mkdir()
    frame = incoming_table.iloc[:300].copy()
    repeat = frame.iloc[[10, 250]]
    pd.concat([frame, repeat], ignore_index=True).to_parquet(folder / "a.parquet")
    frame.iloc[:5].to_parquet(folder / "b.parquet")  # the same keys again, in another file
    result = score_parquet(
        fitted_detector, folder, tmp_path / "s.parquet", tmp_path / "r.parquet", batch_rows=64
    )
    scored = pd.read_parquet(tmp_path / "s.parquet")
    assert result.n_scored == 307
    duplicates = scored.dropna(subset=["duplicate_of_row"])
    assert duplicates["source_row"].tolist() == [300, 301]
    assert duplicates["duplicate_of_row"].tolist() == [10, 250]
    assert duplicates["source_file"].str.endswith("a.parquet").all()


def test_an_empty_file_gives_empty_outputs(tmp_path, fitted_detector, incoming_table):
    path = tmp_path / "empty.parquet"
    incoming_table.iloc[:0].to_parquet(path)
    result = score_parquet(fitted_detector, path, tmp_path / "s.parquet", tmp_path / "r.parquet")
    assert (result.n_rows, result.n_scored, result.n_rejected) == (0, 0, 0)
    scored = pq.read_table(tmp_path / "s.parquet")
    assert scored.num_rows == 0 and "anomaly_score" in scored.column_names
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 0


def test_folder_of_files_keeps_each_files_rows_apart(tmp_path, fitted_detector, incoming_table):
    folder = tmp_path / "landing"
    folder.mkdir()
    frame = damaged(incoming_table)
    frame.iloc[:700].to_parquet(folder / "a.parquet")
    # a later file with an extra column: the rejects file has it, null for the first file's rows
    frame.iloc[700:].assign(operator="x").to_parquet(folder / "b.parquet", row_group_size=100)
    model = LoadedModel(fitted_detector, "m", "1", "models:/m/1")
    result = score_files_to(model, str(folder), tmp_path / "out" / "scores.parquet")

    rejected = pd.read_parquet(tmp_path / "out" / "scores.rejects.parquet")
    scored = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert result.n_rows == len(scored) + len(rejected) == len(frame)
    assert sorted(rejected["source_row"]) == [3, 10, 11, 500]
    assert rejected["source_file"].str.endswith("a.parquet").all()
    assert rejected["operator"].isna().all()
    b_rows = scored[scored["source_file"].str.endswith("b.parquet")]
    assert len(b_rows) == len(frame) - 700
    assert b_rows["source_row"].tolist() == list(range(len(frame) - 700))


def test_a_file_missing_a_column_is_quarantined_and_the_others_scored(
    tmp_path, fitted_detector, incoming_table
):
    folder = tmp_path / "landing"
    folder.mkdir()
    incoming_table.to_parquet(folder / "a.parquet")
    incoming_table.drop(columns="power").to_parquet(folder / "b.parquet")
    out = tmp_path / "out"
    result = score_parquet(fitted_detector, folder, out / "s.parquet", out / "r.parquet")

    assert result.n_scored + result.n_rejected == len(incoming_table)
    assert [q.source_file for q in result.quarantined] == [str(folder / "b.parquet")]
    assert result.quarantined[0].reason.startswith("missing column 'power'")
    assert result.n_quarantined_rows == len(incoming_table)
    listed = pd.read_parquet(result.quarantine)
    assert listed["source_file"].tolist() == [str(folder / "b.parquet")]
    assert listed["rows"].tolist() == [len(incoming_table)]
    scored = pd.read_parquet(out / "s.parquet")
    assert scored["source_file"].str.endswith("a.parquet").all()


def corrupt_row_group(path, group: int) -> None:
    """Overwrite row group ``group``'s pages with noise, leaving the footer readable."""
    meta = pq.ParquetFile(path).metadata.row_group(group)
    columns = [meta.column(i) for i in range(meta.num_columns)]
    start = min(c.data_page_offset for c in columns)
    end = max(c.data_page_offset + c.total_compressed_size for c in columns)
    data = bytearray(path.read_bytes())
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_a_file_corrupt_deep_inside_is_set_aside_whole(tmp_path, fitted_detector, incoming_table):
    folder = tmp_path / "in"
    folder.mkdir()
    incoming_table.to_parquet(folder / "a.parquet")
    # The footer reads, so the plan accepts b; its fourth row group only fails once reached,
    # after rows of both files were written, so the run must start again without b.
    incoming_table.to_parquet(folder / "b.parquet", row_group_size=300)
    corrupt_row_group(folder / "b.parquet", 3)
    incoming_table.to_parquet(folder / "c.parquet")
    out = tmp_path / "out"
    result = score_parquet(
        fitted_detector, folder, out / "s.parquet", out / "r.parquet", batch_rows=100
    )

    assert [q.source_file for q in result.quarantined] == [str(folder / "b.parquet")]
    assert result.quarantined[0].reason.startswith("cannot read as Parquet")
    scored, rejected = pd.read_parquet(out / "s.parquet"), pd.read_parquet(out / "r.parquet")
    assert len(scored) + len(rejected) == result.n_rows == 2 * len(incoming_table)
    assert set(scored["source_file"].str.rsplit("/", n=1).str[-1]) == {"a.parquet", "c.parquet"}
    assert not scored.duplicated(["source_file", "source_row"]).any()
    assert sorted(p.name for p in out.iterdir()) == [
        "r.parquet",
        "s.parquet",
        "s.quarantine.parquet",
    ]


def test_every_file_quarantined_still_writes_empty_outputs(tmp_path, fitted_detector):
    path = tmp_path / "notparquet.parquet"
    path.write_text("id,value\n1,2\n")
    out = tmp_path / "out"
    result = score_parquet(fitted_detector, path, out / "s.parquet", out / "r.parquet")
    assert (result.n_rows, len(result.quarantined)) == (0, 1)
    assert "cannot read as Parquet" in result.quarantined[0].reason
    assert result.quarantined[0].rows is None
    assert pq.read_table(out / "s.parquet").num_rows == 0


def test_score_sample_keeps_all_scores_up_to_its_size_then_a_uniform_sample():
    small = _ScoreSample(size=100)
    small.add(np.arange(60.0))
    small.add(np.arange(60.0, 90.0))
    np.testing.assert_array_equal(np.sort(small.values()), np.arange(90.0))

    big = _ScoreSample(size=1000, seed=1)
    for start in range(0, 100_000, 7_000):
        big.add(np.arange(start, min(start + 7_000, 100_000), dtype=float))
    values = big.values()
    assert len(values) == 1000 and len(np.unique(values)) == 1000
    # uniform over 0..99999: each tenth of the range holds about a tenth of the sample
    counts = np.histogram(values, bins=10, range=(0, 100_000))[0]
    assert counts.min() > 60 and counts.max() < 140


def test_prefetch_yields_everything_in_order_and_passes_errors_on():
    assert list(prefetch(iter(range(10)), depth=3)) == list(range(10))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(broken()))


def test_in_memory_and_streamed_outputs_follow_one_spec(tmp_path, fitted_detector, incoming_table):
    # SCORED_FIELDS is the one description of the scored output: the streamed file (tables) and
    # the file written from an in-memory batch (series, images, the landing folder) have those
    # columns in that order after the keys, with those types (in-memory text is written as
    # pandas writes it, large_string, as the v1 fixtures' outputs were).
    from anomaly.data.schema import SCORED_FIELDS
    from anomaly.pipeline import write_outputs

    def kind(t: pa.DataType) -> pa.DataType:
        return pa.string() if pa.types.is_large_string(t) else t

    path = tmp_path / "in.parquet"
    damaged(incoming_table).to_parquet(path)
    score_parquet(fitted_detector, path, tmp_path / "s.parquet", tmp_path / "r.parquet", "m", "3")
    batch = score_frame(fitted_detector, read_table(path), "m", "3", source=str(path))
    write_outputs(batch, tmp_path / "mem.parquet", tmp_path / "mem.rejects.parquet")
    keys = list(fitted_detector.schema_.keys)
    streamed = pq.read_schema(tmp_path / "s.parquet")
    assert [(f.name, f.type) for f in streamed][len(keys) :] == [
        (f.name, f.type) for f in SCORED_FIELDS
    ]
    in_memory = pq.read_schema(tmp_path / "mem.parquet")
    assert [(f.name, kind(f.type)) for f in in_memory] == [(f.name, kind(f.type)) for f in streamed]
