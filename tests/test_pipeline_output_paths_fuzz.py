"""Fuzzing the output-path choices: whatever paths a user passes, no input changes.

Output, rejects and quarantine-list paths are drawn from the inputs themselves, symlinks to
them, one shared fresh path and distinct fresh paths. Each run either refuses with
OutputPathError before writing anything, or scores; in both cases every input is byte-identical
afterwards, and a run that scores accounts for every row.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anomaly.errors import OutputPathError
from anomaly.pipeline import score_files_to
from anomaly.quarantine import quarantine_path_for
from anomaly.tracking import LoadedModel

CHOICES = ("input a", "input b", "link to a", "shared", "fresh")


def _path(choice: str, root: Path, role: str) -> Path:
    return {
        "input a": root / "in" / "a.parquet",
        "input b": root / "in" / "b.parquet",
        "link to a": root / "link.parquet",
        "shared": root / "out" / "shared.parquet",
        "fresh": root / "out" / f"{role}.parquet",
    }[choice]


@pytest.fixture(scope="module")
def tables(incoming_table):
    return incoming_table.iloc[:120], incoming_table.iloc[120:200]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(output=st.sampled_from(CHOICES), rejects=st.sampled_from((None, *CHOICES)))
def test_no_choice_of_output_paths_changes_an_input(fitted_detector, tables, output, rejects):
    model = LoadedModel(fitted_detector, "m", "1", "models:/m/1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        tables[0].to_parquet(root / "in" / "a.parquet")
        tables[1].to_parquet(root / "in" / "b.parquet")
        (root / "link.parquet").symlink_to(root / "in" / "a.parquet")
        before = {p.name: p.read_bytes() for p in (root / "in").iterdir()}
        out = _path(output, root, "output")
        rej = None if rejects is None else _path(rejects, root, "rejects")
        try:
            result = score_files_to(model, str(root / "in"), out, rej)
        except OutputPathError:
            written = sorted(p.name for p in (root / "in").iterdir())
            assert written == sorted(before)  # nothing was added, not even a lock file
        else:
            assert result.n_scored + result.n_rejected == 200
            targets = {out.resolve(), quarantine_path_for(out).resolve()}
            targets.add(rej.resolve() if rej is not None else None)
            assert (root / "in" / "a.parquet").resolve() not in targets
            assert (root / "in" / "b.parquet").resolve() not in targets
        after = {p.name: p.read_bytes() for p in (root / "in").iterdir() if p.name in before}
        assert after == before
