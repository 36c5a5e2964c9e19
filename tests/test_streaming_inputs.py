"""Inputs as common tools write them, and inputs that change under a run, through score_files_to."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import anomaly.streaming as streaming
from anomaly.pipeline import score_files_to
from anomaly.tracking import LoadedModel


@pytest.fixture
def model(fitted_detector):
    return LoadedModel(fitted_detector, "m", "1", "models:/m/1")


def test_parquet_as_common_tools_write_it_is_scored_whole(tmp_path, model, incoming_table):
    folder = tmp_path / "in"
    folder.mkdir()
    # pandas with a named, non-default index
    indexed = incoming_table.iloc[:100].set_index("reading_id", drop=False).rename_axis("idx")
    indexed.to_parquet(folder / "a.parquet")
    # text dictionary-encoded in one file (pandas categoricals, Spark), plain in the others
    table = pa.Table.from_pandas(incoming_table.iloc[100:200], preserve_index=False)
    i = table.column_names.index("machine_type")
    table = table.set_column(i, "machine_type", table["machine_type"].dictionary_encode())
    pq.write_table(table, folder / "b.parquet")
    # page checksums stored by the writer, verified on reading
    plain = pa.Table.from_pandas(incoming_table.iloc[200:300], preserve_index=False)
    pq.write_table(plain, folder / "c.parquet", write_page_checksum=True)

    result = score_files_to(model, str(folder), tmp_path / "out" / "s.parquet")
    assert not result.quarantined
    assert (result.n_scored + result.n_rejected) == 300
    scored = pd.read_parquet(tmp_path / "out" / "s.parquet")
    by_file = scored["source_file"].str.rsplit("/", n=1).str[-1].value_counts().to_dict()
    assert by_file == {"a.parquet": 100, "b.parquet": 100, "c.parquet": 100}


def test_a_file_replaced_after_planning_is_quarantined_and_counts_stay_whole(
    tmp_path, model, incoming_table, monkeypatch
):
    folder = tmp_path / "in"
    folder.mkdir()
    incoming_table.iloc[:300].to_parquet(folder / "a.parquet")
    incoming_table.iloc[300:600].to_parquet(folder / "b.parquet")
    real_plan = streaming.plan_sources

    def plan_then_replace(detector, data):
        # Another process replaces b.parquet right after the run planned it from its footer.
        planned = real_plan(detector, data)
        incoming_table.iloc[:10].to_parquet(folder / "b.parquet")
        return planned

    monkeypatch.setattr(streaming, "plan_sources", plan_then_replace)
    result = score_files_to(model, str(folder), tmp_path / "out" / "s.parquet")
    assert [q.source_file for q in result.quarantined] == [str(folder / "b.parquet")]
    assert "changed while the run was under way" in result.quarantined[0].reason
    assert result.n_scored + result.n_rejected == 300
    listed = pd.read_parquet(tmp_path / "out" / "s.quarantine.parquet")
    assert listed["source_file"].tolist() == [str(folder / "b.parquet")]
