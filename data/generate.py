"""Generate the sample data the demo and README use: a table, time series and images.

Writes into this directory (or --out):
  sensors_train.parquet        normal readings to train on
  incoming/batch_001.parquet   a new batch with planted anomalies (column injected_anomaly)
  incoming/batch_002.parquet   another, with a few rows that have missing sensor values
  series_train.parquet         two machines' sensor series at 1 s, normal behaviour
  series_incoming/batch_001.parquet  the next stretch of both, with planted anomalous spans
  images_train/ok_NNN.png      16x16 images of one soft blob, normal
  images_incoming/             new images: normal_NNN.png and defect_NNN.png (a bright corner)

Everything is generated (about 1 MB in all) and kept out of git.

Run: python data/generate.py [--out DIR] [--rows N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly.data.parquet import write_parquet_atomic
from anomaly.data.synthetic import make_blob_images, make_sensor_table, make_series_table

IMAGE_SIZE = (16, 16)


def generate(out: Path, rows: int = 6000) -> list[Path]:
    """Every sample the demo uses: the table, the series and the images."""
    return [*generate_table(out, rows), *generate_series(out), *generate_images(out)]


def generate_table(out: Path, rows: int = 6000) -> list[Path]:
    train = make_sensor_table(rows, anomaly_fraction=0.0, seed=1)
    batch1 = make_sensor_table(
        rows // 3, anomaly_fraction=0.05, seed=2, start="2026-02-01", first_id=rows
    )
    batch2 = make_sensor_table(
        rows // 3, anomaly_fraction=0.05, seed=3, start="2026-03-01", first_id=rows + rows // 3
    )
    # Real feeds drop readings: a few rows the pipeline must set aside with a reason, not lose.
    gaps = np.random.default_rng(4).choice(len(batch2), size=5, replace=False)
    batch2.loc[gaps[:3], "pressure"] = np.nan
    batch2.loc[gaps[3:], "temperature"] = np.inf
    return [
        write_parquet_atomic(train, out / "sensors_train.parquet"),
        write_parquet_atomic(batch1, out / "incoming" / "batch_001.parquet"),
        write_parquet_atomic(batch2, out / "incoming" / "batch_002.parquet"),
    ]


def generate_series(out: Path, points: int = 2400) -> list[Path]:
    """Two machines: a normal stretch to train on, then the next stretch with 4 planted spans."""
    train = make_series_table(points, n_series=2, seed=11)
    start = train["timestamp"].max() + np.timedelta64(1, "s")
    incoming = make_series_table(points // 4, n_series=2, anomalies=2, seed=12, start=str(start))
    return [
        write_parquet_atomic(train, out / "series_train.parquet"),
        write_parquet_atomic(incoming, out / "series_incoming" / "batch_001.parquet"),
    ]


def generate_images(out: Path, n_train: int = 400) -> list[Path]:
    """Normal blob images to train on; new ones, a fifth of them with a defect, to score."""
    sets = {
        out / "images_train" / "ok": make_blob_images(n_train, IMAGE_SIZE, seed=21),
        out / "images_incoming" / "normal": make_blob_images(80, IMAGE_SIZE, seed=22),
        out / "images_incoming" / "defect": make_blob_images(20, IMAGE_SIZE, seed=23, defect=True),
    }
    paths = []
    for prefix, images in sets.items():
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            path = prefix.parent / f"{prefix.name}_{i:03d}.png"
            Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(path)
            paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--rows", type=int, default=6000)
    args = parser.parse_args()
    paths = generate(args.out, args.rows)
    folders = sorted({p.parent for p in paths if p.suffix == ".png"})
    for path in [p for p in paths if p.suffix != ".png"] + folders:
        print(path)


if __name__ == "__main__":
    main()
