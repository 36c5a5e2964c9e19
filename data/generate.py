"""Generate the sample sensor data the demo and README use.

Writes into this directory (or --out):
  sensors_train.parquet        normal readings to train on
  incoming/batch_001.parquet   a new batch with planted anomalies (column injected_anomaly)
  incoming/batch_002.parquet   another, with a few rows that have missing sensor values

Run: python data/generate.py [--out DIR] [--rows N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from anomaly.data.parquet import write_parquet_atomic
from anomaly.data.synthetic import make_sensor_table


def generate(out: Path, rows: int = 6000) -> list[Path]:
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--rows", type=int, default=6000)
    args = parser.parse_args()
    for path in generate(args.out, args.rows):
        print(path)


if __name__ == "__main__":
    main()
