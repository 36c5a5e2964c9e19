"""Peak memory of scoring a series file and an image folder, beside a table of the same rows.

Writes (in a temp dir) one time-series Parquet file of ``--points`` points (4 sensors, 4 series,
1 s apart), a folder of ``--images`` PNG images (28x28 grey), and a table with the same number of
rows and four features, trains a small model of each kind on a slice, then scores each input with
``anomaly.file_scoring.score_files_to`` (what ``anomaly score`` runs) in its own process and prints
rows/s and peak RSS (VmHWM) of each. Every kind streams: tables by record batch, series in chunks
of points with a look-ahead, images a decoded chunk at a time. With ``--landing`` the table and
the series file are also scored as a landing-folder file (``anomaly.landing.score_landing_file``:
the same streaming path, plus monitoring and a run logged to a SQLite MLflow store in the temp
dir), the way the scheduled deployment scores them.

Run: python benchmarks/kinds_memory.py [--points 5000000] [--images 20000] [--threads 2] [--landing]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 1 << 20


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_series(path: Path, points: int, seed: int = 0) -> None:
    """``points`` rows over 4 series, each in time order, written a chunk at a time."""
    from anomaly.data.synthetic import make_series_table

    per_series = points // 4
    writer = None
    try:
        for series in range(4):
            for first in range(0, per_series, CHUNK):
                n = min(CHUNK, per_series - first)
                frame = make_series_table(n, seed=seed + series * 1000 + first // CHUNK)
                frame["timestamp"] = np.datetime64("2024-01-01") + (
                    np.arange(first, first + n) * np.timedelta64(1, "s")
                )
                frame["machine"] = f"m{series}"
                table = pa.Table.from_pandas(
                    frame.drop(columns=["injected_anomaly"]), preserve_index=False
                )
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(
        path,
        pa.schema([("reading_id", pa.int64())] + [(f"s{j}", pa.float64()) for j in range(4)]),
    ) as writer:
        for first in range(0, rows, CHUNK):
            n = min(CHUNK, rows - first)
            values = rng.standard_normal((n, 4))
            columns = {"reading_id": np.arange(first, first + n)}
            columns |= {f"s{j}": values[:, j] for j in range(4)}
            writer.write_table(pa.table(columns))


def write_images(folder: Path, n: int) -> None:
    from PIL import Image

    from anomaly.data.synthetic import make_blob_images

    folder.mkdir()
    for first in range(0, n, 1000):
        images = make_blob_images(min(1000, n - first), (28, 28), seed=first)
        for i, image in enumerate(images):
            Image.fromarray((image[0] * 255).astype(np.uint8)).save(folder / f"{first + i:06d}.png")


def train(kind: str, data: Path, model_dir: Path) -> None:
    from anomaly import AutoencoderDetector
    from anomaly.data.images import read_images

    common = {"epochs": 2, "device": "cpu", "verbose": False}
    if kind == "series":
        sample = pq.ParquetFile(data).read_row_group(0).slice(0, 20_000).to_pandas()
        detector = AutoencoderDetector(
            model="conv1d", window=60, time_column="timestamp", series_column="machine", **common
        )
        detector.fit(sample)
    elif kind == "images":
        detector = AutoencoderDetector(model="conv", image_size=(28, 28), **common)
        detector.fit(read_images(data, (28, 28)).images[:2000])
    else:
        sample = pq.ParquetFile(data).read_row_group(0).slice(0, 100_000).to_pandas()
        detector = AutoencoderDetector(key_columns=["reading_id"], **common).fit(sample)
    detector.save(model_dir)


def child(data: Path, model_dir: Path, out: Path, threads: int, landing: bool = False) -> None:
    import torch

    from anomaly import AutoencoderDetector
    from anomaly.file_scoring import score_files_to
    from anomaly.tracking import LoadedModel

    torch.set_num_threads(threads)
    detector = AutoencoderDetector.load(model_dir, device="cpu")
    model = LoadedModel(detector, "bench", "1", "models:/bench/1")
    start = time.perf_counter()
    if landing:
        rows = score_as_landing_file(model, data, out)
    else:
        rows = score_files_to(model, str(data), out).n_rows
    seconds = time.perf_counter() - start
    print(json.dumps({"rows": rows, "seconds": seconds, "peak_rss_mib": peak_rss_mib()}))


def score_as_landing_file(model: object, data: Path, out: Path) -> int:
    from anomaly.data.parquet import file_sha256
    from anomaly.landing import LandingFile, score_landing_file
    from anomaly.tracking import TrackingConfig

    folder = out.with_suffix("")
    tracking = TrackingConfig(
        tracking_uri=f"sqlite:///{folder}.mlflow.db",
        artifact_location=f"{folder}.artifacts",
        experiment_name="bench",
        registered_model_name="bench",
    )
    st = data.stat()
    file = LandingFile(data, data.name, st.st_size, st.st_mtime_ns, file_sha256(data))
    return score_landing_file(model, file, folder, tracking).rows_in  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=5_000_000)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--landing", action="store_true", help="also score as landing files")
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.threads, args.landing)
        return
    work = Path(tempfile.mkdtemp(prefix="anomaly-kinds-", dir=args.dir))
    try:
        inputs = {
            "table": (work / "table.parquet", write_table, args.points),
            "series": (work / "series.parquet", write_series, args.points),
            "images": (work / "images", write_images, args.images),
        }
        for kind, (path, write, n) in inputs.items():
            start = time.perf_counter()
            write(path, n)
            train(kind, path, work / f"model-{kind}")
            print(
                f"{kind}: {n:,} rows written and a model trained in {time.perf_counter() - start:.0f}s"
            )
        runs = [(kind, path, False) for kind, (path, _, _) in inputs.items()]
        if args.landing:
            runs += [(kind, inputs[kind][0], True) for kind in ("table", "series")]
        for kind, path, landing in runs:
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--child"]
            cmd += [str(path), str(work / f"model-{kind}"), str(work / f"{kind}.scored.parquet")]
            if landing:
                cmd[-1] = str(work / f"landing-{kind}.scored.parquet")
                cmd.append("--landing")
                kind = f"landing {kind}"
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(f"{kind}: failed\n{done.stderr[-2000:]}")
                continue
            got = json.loads([s for s in done.stdout.splitlines() if s.startswith("{")][-1])
            print(
                f"{kind:14s} {got['rows']:>10,} rows  {got['rows'] / got['seconds']:>10,.0f} rows/s  "
                f"peak RSS {got['peak_rss_mib']:>7,.0f} MiB"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
