"""End-to-end streaming scoring of a large Parquet file vs reading the same file with pyarrow alone.

Writes a file of ``--size-gb`` GiB (a ``reading_id`` key and 32 correlated float32 columns, row
groups of 1 Mi rows), trains a small 32-64-16 autoencoder on a sample of it, then in separate
processes (so each peak RSS is that process's own):

1. reads the file with ``pyarrow.parquet.ParquetFile.iter_batches`` and nothing else,
2. scores it with ``anomaly.streaming.score_parquet`` (read -> validate -> preprocess -> score ->
   write the scored and rejects Parquet files),
3. ``score_samples`` of the same model on the first ``--memory-rows`` rows already in memory as a
   DataFrame (the model's own speed: what streaming is measured against, target >= 70%),
4. a plain PyOD script, when pyod is installed (``make bench-stream`` installs it): read the
   same rows with pandas, ``AutoEncoder.decision_function`` (same 64-16 layers, trained in that
   process on the same sample, training not timed), write the scores with pandas (target:
   streaming >= 10x),

and prints rows/s of each, the ratios and each process's peak RSS. With CUDA present (or
``--device cuda``) the scoring runs on the GPU as well as the CPU and both are reported.

Run: python benchmarks/streaming_score.py [--size-gb 0.25] [--device auto|cpu|cuda] [--profile]
     [--memory-rows 1000000] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WIDTH = 32
ROW_GROUP = 1 << 20
BYTES_PER_ROW = 8 + 4 * WIDTH  # uncompressed; random floats barely compress


def make_chunk(rng: np.random.Generator, mixing: np.ndarray, first: int, rows: int) -> pa.Table:
    latent = rng.standard_normal((rows, mixing.shape[0]), dtype=np.float32)
    values = latent @ mixing + 0.1 * rng.standard_normal((rows, WIDTH), dtype=np.float32)
    columns = {"reading_id": pa.array(np.arange(first, first + rows, dtype=np.int64))}
    columns |= {f"s{j:02d}": pa.array(values[:, j]) for j in range(WIDTH)}
    return pa.table(columns)


def write_data(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((8, WIDTH), dtype=np.float32)
    with pq.ParquetWriter(path, make_chunk(rng, mixing, 0, 1).schema) as writer:
        for first in range(0, rows, ROW_GROUP):
            writer.write_table(make_chunk(rng, mixing, first, min(ROW_GROUP, rows - first)))


def train_model(data: Path, model_dir: Path) -> None:
    from anomaly import AutoencoderDetector

    sample = pq.ParquetFile(data).read_row_group(0).slice(0, 100_000).to_pandas()
    AutoencoderDetector(
        hidden_layers=(64,),
        latent_dim=16,
        epochs=3,
        batch_size=256,
        key_columns=["reading_id"],
        device="cpu",
        verbose=False,
    ).fit(sample).save(model_dir)


def peak_rss_mib() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: a child's ru_maxrss starts from the
    parent's at fork, and the parent held the generated data."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(
    mode: str,
    data: Path,
    model_dir: Path,
    out_dir: Path,
    device: str,
    batch_rows: int,
    memory_rows: int = 1_000_000,
) -> None:
    """One measurement in this process; prints a JSON line."""
    if mode == "memory":
        from anomaly import AutoencoderDetector

        detector = AutoencoderDetector.load(model_dir, device=device)
        frame = _first_rows(data, memory_rows).to_pandas()
        detector.score_samples(frame.head(1000))  # first-call set-up is not the model's speed
        start = time.perf_counter()
        scores = detector.score_samples(frame)
        seconds = time.perf_counter() - start
        rows = len(scores)
    elif mode == "pyod":
        import pandas as pd
        import torch
        from pyod.models.auto_encoder import AutoEncoder

        train = pq.ParquetFile(data).read_row_group(0).slice(0, 100_000).to_pandas()
        features = [c for c in train.columns if c != "reading_id"]
        model = AutoEncoder(
            hidden_neuron_list=[64, 16], epoch_num=3, batch_size=256, verbose=0, device="cpu"
        )
        model.fit(train[features].to_numpy())
        subset = out_dir / "pyod-input.parquet"
        pq.write_table(_first_rows(data, memory_rows), subset)
        start = time.perf_counter()
        frame = pd.read_parquet(subset)
        scores = model.decision_function(frame[features].to_numpy())
        pd.DataFrame({"reading_id": frame["reading_id"], "score": scores}).to_parquet(
            out_dir / "pyod-scores.parquet"
        )
        seconds = time.perf_counter() - start
        rows = len(frame)
    elif mode in ("read", "read-default"):
        # the scorer's READ_OPTIONS, spelled out so this process does not import torch
        options = {"pre_buffer": False, "buffer_size": 1 << 20} if mode == "read" else {}
        start = time.perf_counter()
        parquet = pq.ParquetFile(data, **options)
        rows = sum(b.num_rows for b in parquet.iter_batches(batch_size=batch_rows))
        seconds = time.perf_counter() - start
    else:
        from anomaly import AutoencoderDetector
        from anomaly.streaming import score_parquet

        detector = AutoencoderDetector.load(model_dir, device=device)
        start = time.perf_counter()
        result = score_parquet(
            detector,
            data,
            out_dir / "scores.parquet",
            out_dir / "rejects.parquet",
            "bench",
            "1",
            batch_rows=batch_rows,
            progress=False,
        )
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows = result.n_rows
        assert result.n_scored + result.n_rejected == rows
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


def _first_rows(data: Path, rows: int) -> pa.Table:
    batches = pq.ParquetFile(data).iter_batches(batch_size=min(rows, ROW_GROUP))
    taken, n = [], 0
    for batch in batches:
        taken.append(batch.slice(0, rows - n))
        n += taken[-1].num_rows
        if n >= rows:
            break
    return pa.Table.from_batches(taken)


def run_child(args: argparse.Namespace, mode: str, device: str, profile: bool = False) -> dict:
    cmd = [sys.executable]
    if profile:
        cmd += ["-m", "cProfile", "-s", "cumulative"]
    cmd += [__file__, "--child", mode, "--data", str(args.data), "--model", str(args.model)]
    cmd += ["--out", str(args.out), "--device", device, "--batch-rows", str(args.batch_rows)]
    cmd += ["--memory-rows", str(args.memory_rows)]
    env = None
    if args.threads:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if profile:
        print(done.stdout[done.stdout.index("Ordered by") :][:6000])
    return json.loads(lines[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=0.25, help="input file size in GiB")
    parser.add_argument(
        "--device", default="auto", help="auto (CPU, and CUDA if present), cpu, cuda"
    )
    parser.add_argument("--batch-rows", type=int, default=65_536)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the data (temp dir)")
    parser.add_argument("--profile", action="store_true", help="cProfile the scoring process")
    parser.add_argument(
        "--memory-rows", type=int, default=1_000_000, help="rows for the in-memory baselines"
    )
    parser.add_argument("--threads", type=int, default=None, help="OMP/torch threads per child")
    parser.add_argument(
        "--child",
        choices=["read", "read-default", "score", "memory", "pyod"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(
            args.child,
            args.data,
            args.model,
            args.out,
            args.device,
            args.batch_rows,
            args.memory_rows,
        )
        return

    import torch

    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    work = Path(tempfile.mkdtemp(prefix="anomaly-bench-", dir=args.dir))
    try:
        args.data, args.model, args.out = work / "data.parquet", work / "model", work / "out"
        args.out.mkdir()
        rows = int(args.size_gb * 2**30 / BYTES_PER_ROW)
        start = time.perf_counter()
        write_data(args.data, rows)
        size = args.data.stat().st_size / 2**30
        print(
            f"data: {rows:,} rows x {WIDTH} float32 + int64 key, {size:.2f} GiB on disk, "
            f"written in {time.perf_counter() - start:.0f}s"
        )
        train_model(args.data, args.model)
        run_child(args, "read", "cpu")  # warm the page cache so every run reads the same way
        # The baseline is the faster of pyarrow's default reader and the scorer's own settings
        # (no pre-buffering, 1 MiB buffer), each alone in its process.
        read_rate = 0.0
        for mode, label in (("read-default", "defaults"), ("read", "scorer's options")):
            read = run_child(args, mode, "cpu")
            rate = read["rows"] / read["seconds"]
            read_rate = max(read_rate, rate)
            print(
                f"pyarrow read alone, {label:16s} {rate:>12,.0f} rows/s  "
                f"({read['seconds']:.1f}s, peak RSS {read['peak_rss_mib']:,.0f} MiB)"
            )
        pyod_rate = None
        try:
            import pyod  # noqa: F401

            got = run_child(args, "pyod", "cpu")
            pyod_rate = got["rows"] / got["seconds"]
            print(
                f"plain PyOD script, cpu        {pyod_rate:>12,.0f} rows/s  "
                f"({got['seconds']:.1f}s over {got['rows']:,} rows, "
                f"peak RSS {got['peak_rss_mib']:,.0f} MiB)"
            )
        except ImportError:
            print("plain PyOD script: pyod not installed (make bench-stream installs it)")
        rates = {}
        for device in devices:
            memory = run_child(args, "memory", device)
            memory_rate = memory["rows"] / memory["seconds"]
            print(
                f"score_samples in memory, {device:10s} {memory_rate:>12,.0f} rows/s  "
                f"({memory['seconds']:.1f}s over {memory['rows']:,} rows)"
            )
            scored = run_child(args, "score", device)
            rates[device] = scored["rows"] / scored["seconds"]
            versus = "" if pyod_rate is None else f", {rates[device] / pyod_rate:.1f}x PyOD"
            print(
                f"streaming score, {device:18s} {rates[device]:>12,.0f} rows/s  "
                f"({scored['seconds']:.1f}s, peak RSS {scored['peak_rss_mib']:,.0f} MiB)  "
                f"= {rates[device] / memory_rate:.0%} of in memory, "
                f"{rates[device] / read_rate:.0%} of the raw read{versus}"
            )
        if len(rates) > 1:
            print(f"cuda/cpu: {rates['cuda'] / rates['cpu']:.2f}x")
        print(f"machine: {torch.get_num_threads()} torch threads, torch {torch.__version__}")
        if args.profile:
            run_child(args, "score", devices[0], profile=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
