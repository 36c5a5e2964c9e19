"""No output path may overwrite an input, through the path users run (score_files_to)."""

from __future__ import annotations

import pandas as pd
import pytest

from anomaly.errors import OutputPathError
from anomaly.pipeline import score_files_to
from anomaly.quarantine import quarantine_path_for
from anomaly.tracking import LoadedModel


@pytest.fixture
def folder(tmp_path, incoming_table):
    folder = tmp_path / "in"
    folder.mkdir()
    incoming_table.iloc[:300].to_parquet(folder / "a.parquet")
    incoming_table.iloc[300:500].to_parquet(folder / "b.parquet")
    return folder


@pytest.fixture
def model(fitted_detector):
    return LoadedModel(fitted_detector, "m", "1", "models:/m/1")


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


@pytest.mark.parametrize(
    "output, rejects",
    [("a.parquet", None), ("out.parquet", "b.parquet"), ("out.parquet", "out.quarantine.parquet")],
    ids=["output is an input", "rejects is an input", "rejects is the quarantine list"],
)
def test_clashing_paths_are_refused_before_anything_is_written(folder, model, output, rejects):
    before = _snapshot(folder)
    with pytest.raises(OutputPathError) as error:
        score_files_to(
            model, str(folder), folder / output, None if rejects is None else folder / rejects
        )
    assert str(folder / (rejects or output)) in str(error.value)
    assert _snapshot(folder) == before  # inputs byte-identical, nothing added


def test_symlinked_output_onto_an_input_is_refused(folder, model, tmp_path):
    (tmp_path / "link.parquet").symlink_to(folder / "a.parquet")
    before = _snapshot(folder)
    with pytest.raises(OutputPathError, match="is the input file"):
        score_files_to(model, str(folder), tmp_path / "link.parquet")
    assert _snapshot(folder) == before


def test_outputs_inside_the_input_folder_are_not_read_back_by_a_rerun(folder, model):
    first = score_files_to(model, str(folder), folder / "scores.parquet")
    inputs = {k: v for k, v in _snapshot(folder).items() if k in ("a.parquet", "b.parquet")}
    second = score_files_to(model, str(folder), folder / "scores.parquet")
    assert (second.n_rows, second.n_scored, second.n_rejected) == (
        first.n_rows,
        first.n_scored,
        first.n_rejected,
    )
    assert second.n_rows == 500 and not second.quarantined
    assert pd.read_parquet(quarantine_path_for(folder / "scores.parquet")).empty
    assert {k: v for k, v in _snapshot(folder).items() if k in inputs} == inputs
