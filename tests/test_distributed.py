"""Dask scoring on a real 2-worker local cluster (threads, so it starts in a second)."""

import numpy as np
import pandas as pd
import pytest

from anomaly import distributed
from anomaly.distributed import plan_partitions, score_parquet_dask
from anomaly.pipeline import score_files_to
from anomaly.streaming import plan_sources, score_parquet
from anomaly.tracking import LoadedModel
from tests.test_streaming import corrupt_row_group


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        yield cluster


@pytest.fixture
def landing(tmp_path, incoming_table):
    folder = tmp_path / "landing"
    folder.mkdir()
    frame = incoming_table.copy()
    frame.loc[frame.index[[5, 900]], "vibration"] = np.nan
    frame.iloc[:600].to_parquet(folder / "a.parquet", row_group_size=70)
    frame.iloc[600:].to_parquet(folder / "b.parquet", row_group_size=250)
    frame.iloc[:0].to_parquet(folder / "c.parquet")
    return folder


def test_partitions_cover_every_row_group_once(fitted_detector, landing):
    sources, quarantined = plan_sources(fitted_detector, landing)
    assert not quarantined
    parts = plan_partitions(sources, partition_rows=200)
    for source in sources:
        mine = [p for p in parts if p.source == str(source.path)]
        assert [g for p in mine for g in p.row_groups] == list(range(len(source.row_group_rows)))
        assert sum(p.num_rows for p in mine) == source.num_rows
        # each partition starts where the previous one ended
        assert [p.first_row for p in mine] == list(np.cumsum([0] + [p.num_rows for p in mine])[:-1])
    # the empty file still has its partition, so it is accounted for
    assert [p.num_rows for p in parts if p.source.endswith("c.parquet")] == [0]


def test_dask_scoring_equals_single_process_scoring(tmp_path, fitted_detector, landing, cluster):
    from distributed import Client

    single = score_parquet(
        fitted_detector,
        landing,
        tmp_path / "one.parquet",
        tmp_path / "one.rejects.parquet",
        "m",
        "2",
    )
    with Client(cluster) as client:
        loads_before = sum(distributed._LOADS.values())
        result = score_parquet_dask(
            fitted_detector,
            landing,
            tmp_path / "dask.parquet",
            tmp_path / "dask.rejects.parquet",
            "m",
            "2",
            client=client,
            device="cpu",
            partition_rows=100,
        )
        # 12 partitions on 2 workers: the model was loaded once per worker, not per partition
        assert sum(distributed._LOADS.values()) - loads_before == 2
        assert not distributed._DETECTORS  # and dropped after the run

    assert (result.n_rows, result.n_scored, result.n_rejected, result.n_flagged) == (
        single.n_rows,
        single.n_scored,
        single.n_rejected,
        single.n_flagged,
    )
    assert result.n_rejected == 2
    for name in ("", ".rejects"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / f"dask{name}.parquet"),
            pd.read_parquet(tmp_path / f"one{name}.parquet"),
        )


def test_pipeline_scores_on_an_existing_scheduler(tmp_path, fitted_detector, landing, cluster):
    model = LoadedModel(fitted_detector, "m", "1", "models:/m/1")
    result = score_files_to(
        model, str(landing), tmp_path / "s.parquet", dask_address=cluster.scheduler_address
    )
    scored = pd.read_parquet(tmp_path / "s.parquet")
    rejected = pd.read_parquet(tmp_path / "s.rejects.parquet")
    assert result.n_rows == len(scored) + len(rejected) == 1500
    assert sorted(rejected["source_row"]) == [5, 300]


def test_bad_files_are_quarantined_on_dask_as_in_one_process(
    tmp_path, fitted_detector, landing, incoming_table, cluster
):
    # One file corrupt deep inside (fails on a worker, mid-run), one not Parquet at all.
    incoming_table.to_parquet(landing / "d.parquet", row_group_size=300)
    corrupt_row_group(landing / "d.parquet", 3)
    (landing / "e.parquet").write_bytes(b"")
    model = LoadedModel(fitted_detector, "m", "1", "models:/m/1")
    on_dask = score_files_to(
        model, str(landing), tmp_path / "dask.parquet", dask_address=cluster.scheduler_address
    )
    alone = score_files_to(model, str(landing), tmp_path / "one.parquet")

    for result in (on_dask, alone):
        names = [q.source_file.rsplit("/", 1)[-1] for q in result.quarantined]
        assert sorted(names) == ["d.parquet", "e.parquet"]
        assert result.n_rows == 1500 and result.n_quarantined_rows == len(incoming_table)
    for name in ("", ".rejects", ".quarantine"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / f"dask{name}.parquet"),
            pd.read_parquet(tmp_path / f"one{name}.parquet"),
        )
