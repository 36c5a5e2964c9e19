"""Input listings say what they pass over; output paths never overwrite an input or each other."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from anomaly.data.parquet import list_parquet_files, write_parquet_atomic
from anomaly.data.paths import (
    check_output_paths,
    list_inputs,
    mark_output_folder,
    output_role,
)
from anomaly.errors import DataFileError, OutputPathError

FRAME = pd.DataFrame({"a": [1.0, 2.0]})


def _reasons(listing):
    return {entry.path.name: entry.reason for entry in listing.skipped}


def test_listing_passes_over_entries_with_a_reason(tmp_path):
    FRAME.to_parquet(tmp_path / "a.parquet")
    FRAME.to_parquet(tmp_path / "B.PARQUET")
    FRAME.to_parquet(tmp_path / "c.parq")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".a.parquet.123.tmp").write_text("half")
    (tmp_path / "link.parquet").symlink_to(tmp_path / "a.parquet")
    (tmp_path / "dangling.parquet").symlink_to(tmp_path / "gone.parquet")
    os.mkfifo(tmp_path / "pipe.parquet")
    write_parquet_atomic(FRAME, tmp_path / "scores.parquet", role="scored")

    listing = list_inputs(tmp_path, (".parquet", ".parq", ".pq"))
    assert [p.name for p in listing.files] == ["B.PARQUET", "a.parquet", "c.parq"]
    reasons = _reasons(listing)
    assert reasons["notes.txt"].startswith("not a .parquet")
    assert reasons[".a.parquet.123.tmp"].startswith("hidden")
    assert reasons["link.parquet"] == f"the same file as {tmp_path / 'a.parquet'}"
    assert reasons["dangling.parquet"] == "a symlink whose target does not exist"
    assert reasons["pipe.parquet"] == "not a regular file"
    assert reasons["scores.parquet"] == "the scored output of an earlier run"
    # Every entry is either read or passed over with a reason: nothing silently.
    assert len(listing.files) + len(listing.skipped) == len(list(tmp_path.iterdir()))


def test_a_folder_a_run_wrote_is_passed_over(tmp_path):
    FRAME.to_parquet(tmp_path / "a.parquet")
    mark_output_folder(tmp_path / "scores.heatmaps")
    FRAME.to_parquet(tmp_path / "scores.heatmaps" / "x.parquet")
    assert [p.name for p in list_parquet_files(tmp_path)] == ["a.parquet"]


def test_a_file_named_directly_is_read_whatever_wrote_it(tmp_path):
    path = write_parquet_atomic(FRAME, tmp_path / "scores.parquet", role="scored")
    assert output_role(path) == "scored"
    assert list_parquet_files(path) == [path]
    assert output_role(tmp_path / "missing.parquet") is None


def test_empty_data_argument_is_an_error_not_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    FRAME.to_parquet(tmp_path / "a.parquet")
    with pytest.raises(DataFileError, match="DATA is empty"):
        list_parquet_files("")


def test_output_equal_to_an_input_is_refused_naming_both(tmp_path):
    FRAME.to_parquet(tmp_path / "a.parquet")
    with pytest.raises(OutputPathError, match=r"the output path .*a\.parquet is the input file"):
        check_output_paths(tmp_path, {"output": tmp_path / "a.parquet"})
    with pytest.raises(OutputPathError, match="the rejects path"):
        check_output_paths(tmp_path / "a.parquet", {"rejects": tmp_path / "a.parquet"})


def test_output_reaching_an_input_through_a_symlink_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    FRAME.to_parquet(tmp_path / "in" / "a.parquet")
    (tmp_path / "out.parquet").symlink_to(tmp_path / "in" / "a.parquet")
    with pytest.raises(OutputPathError, match="is the input file"):
        check_output_paths(tmp_path / "in", {"output": tmp_path / "out.parquet"})


def test_a_users_other_file_in_the_input_folder_is_protected_too(tmp_path):
    FRAME.to_parquet(tmp_path / "a.parquet")
    (tmp_path / "notes.csv").write_text("x\n1\n")
    with pytest.raises(OutputPathError, match=r"notes\.csv"):
        check_output_paths(tmp_path, {"rejects": tmp_path / "notes.csv"})


def test_two_outputs_on_one_path_are_refused(tmp_path):
    with pytest.raises(OutputPathError, match=r"the rejects path .* and the quarantine list path"):
        check_output_paths(
            None,
            {"rejects": tmp_path / "q.parquet", "quarantine list": tmp_path / "q.parquet"},
        )


def test_an_earlier_output_in_the_input_folder_may_be_replaced(tmp_path):
    FRAME.to_parquet(tmp_path / "a.parquet")
    write_parquet_atomic(FRAME, tmp_path / "scores.parquet", role="scored")
    check_output_paths(tmp_path, {"output": tmp_path / "scores.parquet"})


def test_heatmap_folder_holding_an_input_or_an_output_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    FRAME.to_parquet(tmp_path / "in" / "a.parquet")
    with pytest.raises(OutputPathError, match="heat-map folder"):
        check_output_paths(tmp_path / "in", {}, {"heat-map": tmp_path})
    with pytest.raises(OutputPathError, match="lies inside the heat-map folder"):
        check_output_paths(
            None, {"output": tmp_path / "maps" / "s.parquet"}, {"heat-map": tmp_path / "maps"}
        )
