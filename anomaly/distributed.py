"""Scoring Parquet data on a Dask cluster: a local one by default, or an existing scheduler.

The input is split into partitions of whole row groups; workers score them with the streaming
scorer's batch function and send the scored and rejected rows back, and this process writes
them, in input order, to the same two files a single-process run writes. The outputs are
therefore identical to :func:`anomaly.streaming.score_parquet`, and no shared filesystem is
needed for the outputs (the inputs must be readable by the workers at the same paths).

The model travels to each worker once, as the bytes of its saved files (JSON, safetensors,
allowlisted skops: nothing unpickled from the model), and a worker plugin loads it once per
worker; partitions look it up by the model's checksum.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from distributed import WorkerPlugin

from anomaly.errors import DataFileError
from anomaly.quarantine import quarantine_path_for
from anomaly.streaming import (
    DEFAULT_BATCH_ROWS,
    READ_OPTIONS,
    ParquetSource,
    ScoredWriter,
    StreamResult,
    finish_quarantine,
    output_schemas,
    plan_sources,
    progress_bar,
    run_with_quarantine,
    score_record_batch,
)

if TYPE_CHECKING:
    from distributed import Client

    from anomaly.detectors import AutoencoderDetector

logger = logging.getLogger(__name__)

# About 1 M rows per task: long enough that scheduling (a few ms per task) is noise, short
# enough that a worker's result (keys and scores) stays in the tens of MB.
DEFAULT_PARTITION_ROWS = 1_048_576

# Detectors loaded on this process's workers, by (worker address, model checksum). A process
# may host several workers (processes=False), each with its own copy.
_DETECTORS: dict[tuple[str, str], AutoencoderDetector] = {}
# How many times each model was loaded in this process (what "once per worker" is checked by).
_LOADS: Counter[str] = Counter()


@dataclass(frozen=True)
class Partition:
    """A run of whole row groups of one file, starting at row ``first_row`` of that file."""

    path: str  # absolute, for the worker to open
    source: str  # as listed, for source_file (the same as a single-process run writes)
    row_groups: tuple[int, ...]
    first_row: int
    num_rows: int


def plan_partitions(
    sources: list[ParquetSource], partition_rows: int = DEFAULT_PARTITION_ROWS
) -> list[Partition]:
    """Group each file's row groups into partitions of about ``partition_rows`` rows, in order.

    A file without row groups still gets one (empty) partition, so it is accounted for.
    """
    partitions = []
    for source in sources:
        path, name = str(source.path.resolve()), str(source.path)
        start, rows = 0, 0
        groups: list[int] = []
        for index, n in enumerate(source.row_group_rows):
            if groups and rows + n > partition_rows:
                partitions.append(Partition(path, name, tuple(groups), start, rows))
                start, groups, rows = start + rows, [], 0
            groups.append(index)
            rows += n
        if groups or not source.row_group_rows:
            partitions.append(Partition(path, name, tuple(groups), start, rows))
    return partitions


def model_payload(detector: AutoencoderDetector) -> tuple[str, dict[str, bytes]]:
    """The saved model's files as bytes, and a key naming this model (SHA-256 of its manifest)."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "model"
        detector.save(directory)
        files = {p.name: p.read_bytes() for p in sorted(directory.iterdir())}
    return hashlib.sha256(files["manifest.json"]).hexdigest(), files


class DetectorPlugin(WorkerPlugin):
    """Loads the model once on each worker (and on workers that join later) for one run."""

    def __init__(self, key: str, files: dict[str, bytes], device: str):
        self.key = key
        self.files = files
        self.device = device
        self.name = f"anomaly-detector-{key[:16]}"

    def setup(self, worker: Any) -> None:
        from anomaly.detectors import AutoencoderDetector

        with tempfile.TemporaryDirectory() as tmp:
            for name, data in self.files.items():
                (Path(tmp) / name).write_bytes(data)
            detector = AutoencoderDetector.load(tmp, device=self.device)
        _DETECTORS[(worker.address, self.key)] = detector
        _LOADS[self.key] += 1
        logger.info("worker %s loaded model %s", worker.address, self.key[:12])

    def teardown(self, worker: Any) -> None:
        _DETECTORS.pop((worker.address, self.key), None)


def worker_detector(key: str) -> AutoencoderDetector:
    """The detector the plugin loaded on the worker running the current task."""
    from distributed import get_worker

    worker = get_worker()
    try:
        return _DETECTORS[(worker.address, key)]
    except KeyError:
        raise RuntimeError(
            f"model {key[:12]} is not loaded on worker {worker.address}; was its plugin registered?"
        ) from None


def score_partition(
    key: str,
    partition: Partition,
    model_name: str,
    model_version: str,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> tuple[pa.Table, pa.Table]:
    """Score one partition on a worker: ``(scored, rejected)`` tables, in row order."""
    detector = worker_detector(key)
    scored, rejected = [], []
    row = partition.first_row
    try:
        parquet = pq.ParquetFile(partition.path, **READ_OPTIONS)
        batches = (
            parquet.iter_batches(batch_size=batch_rows, row_groups=list(partition.row_groups))
            if partition.row_groups
            else iter(())
        )
        for batch in batches:
            s, r = score_record_batch(
                detector, batch, partition.source, row, model_name, model_version
            )
            scored.append(s)
            rejected.append(r)
            row += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        if isinstance(exc, DataFileError):
            raise
        # Named, with the file, so the run sets this file aside instead of failing.
        raise DataFileError(
            f"{partition.source}: cannot read as Parquet ({exc})", source=partition.source
        ) from exc
    if not scored:  # row groups without rows
        s, r = score_record_batch(
            detector,
            parquet.schema_arrow.empty_table(),
            partition.source,
            row,
            model_name,
            model_version,
        )
        scored, rejected = [s], [r]
    return pa.concat_tables(scored), pa.concat_tables(rejected)


def connect(address: str | None = None, n_workers: int | None = None) -> Client:
    """A client of the scheduler at ``address``, or of a new local cluster (one process per core)."""
    from distributed import Client, LocalCluster

    if address:
        return Client(address)
    cluster = LocalCluster(
        n_workers=n_workers or os.cpu_count() or 1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    )
    return Client(cluster)


def score_parquet_dask(
    detector: AutoencoderDetector,
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    rejects: str | os.PathLike[str],
    model_name: str = "",
    model_version: str = "",
    address: str | None = None,
    client: Client | None = None,
    device: str = "auto",
    partition_rows: int = DEFAULT_PARTITION_ROWS,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool | None = None,
    quarantine: str | os.PathLike[str] | None = None,
) -> StreamResult:
    """Score every Parquet file of ``data`` on Dask workers into two Parquet files.

    Same outputs as :func:`anomaly.streaming.score_parquet`, quarantine included. Uses
    ``client`` if given, else connects to the scheduler at ``address``, else starts a local
    cluster for the run. Results come back in a window of a few partitions per worker, so
    memory here stays bounded.
    """
    detector._check_fitted()
    sources, quarantined = plan_sources(detector, data)
    key, files = model_payload(detector)
    owned = client is None
    client = client if client is not None else connect(address)
    plugin = DetectorPlugin(key, files, device)
    try:
        client.register_plugin(plugin)
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))

        def run(remaining: list[ParquetSource]) -> StreamResult:
            return _score_on_cluster(
                client,
                key,
                remaining,
                detector,
                output,
                rejects,
                model_name,
                model_version,
                n_workers,
                partition_rows,
                batch_rows,
                progress,
            )

        result = run_with_quarantine(run, sources, quarantined)
    finally:
        if owned:
            cluster = client.cluster
            client.close()
            if cluster is not None:
                cluster.close()
        else:
            # A shared cluster gets its memory back: the plugin's teardown drops the model.
            client.unregister_worker_plugin(plugin.name)
    logger.info(
        "scored %d rows on %d dask worker(s): %d scored, %d rejected, %d flagged",
        result.n_rows,
        n_workers,
        result.n_scored,
        result.n_rejected,
        result.n_flagged,
    )
    return finish_quarantine(result, quarantined, quarantine or quarantine_path_for(output))


def _score_on_cluster(
    client: Client,
    key: str,
    sources: list[ParquetSource],
    detector: AutoencoderDetector,
    output: str | os.PathLike[str],
    rejects: str | os.PathLike[str],
    model_name: str,
    model_version: str,
    n_workers: int,
    partition_rows: int,
    batch_rows: int,
    progress: bool | None,
) -> StreamResult:
    scored_schema, rejects_schema = output_schemas(detector, sources)
    partitions = plan_partitions(sources, partition_rows)
    total = sum(s.num_rows for s in sources)
    with (
        ScoredWriter(Path(output), Path(rejects), scored_schema, rejects_schema, total) as sink,
        progress_bar(progress, "scoring on dask") as bar,
    ):
        task = bar.add_task("score", total=total)
        # Two partitions per worker in flight: workers stay busy while results are written
        # here in input order, and at most that many results are held in memory.
        pending: deque[tuple[Partition, Any]] = deque()
        try:
            for partition in partitions:
                future = client.submit(
                    score_partition,
                    key,
                    partition,
                    model_name,
                    model_version,
                    batch_rows,
                    pure=False,
                )
                pending.append((partition, future))
                if len(pending) >= 2 * n_workers:
                    _write_next(pending, sink, bar, task)
            while pending:
                _write_next(pending, sink, bar, task)
        finally:
            # A failed attempt (one file's bad data) must not leave work running on the cluster.
            for _, future in pending:
                future.cancel()
        return sink.commit()


def _write_next(
    pending: deque[tuple[Partition, Any]], sink: ScoredWriter, bar: Any, task: Any
) -> None:
    partition, future = pending.popleft()
    scored, rejected = future.result()
    future.release()
    sink.write(scored, rejected, partition.source)
    bar.advance(task, partition.num_rows)
