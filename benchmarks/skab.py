"""SKAB outlier-detection benchmark for the time-series detectors (conv1d and lstm_seq2seq).

Protocol (../shared/datasets/README.md): each of the 34 labelled files on its own; its first 400
rows (no shuffling) are the training data, assumed normal; the threshold comes from the training
rows only; the rest is the test part. TP/FP/FN/TN are pooled over all 34 test parts:
F1 = TP / (TP + (FP + FN) / 2), FAR = FP / (FP + TN) x 100, MAR = FN / (FN + TP) x 100.

AutoencoderDetector takes the 400 training rows itself and splits them in time order: the first
part trains, the next drives early stopping, the last part calibrates the threshold (its scaler is
fitted on the training part only). The test part is scored as a following batch, with the last
``window - 1`` training points as context, so every test point is scored.

Run: python benchmarks/skab.py [--datasets DIR] [--models conv1d lstm_seq2seq] [--seeds 0]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import track
from rich.table import Table

from anomaly import AutoencoderDetector

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SENSORS = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
]
N_TRAIN = 400
LEADERBOARD = {  # published at SKAB commit b2c0d46c: F1, FAR %, MAR %
    "Conv-AE": (0.78, 13.55, 28.02),
    "LSTM-AE": (0.74, 29.96, 25.92),
    "MSET": (0.78, 39.73, 14.13),
    "Isolation forest": (0.29, 2.56, 82.89),
}
# Settings per model: windows as in SKAB's own Conv-AE (60) and LSTM-AE (10) baselines.
MODELS = {
    "conv1d": {"model": "conv1d", "window": 60, "dropout": 0.2},
    "lstm_seq2seq": {
        "model": "lstm_seq2seq",
        "window": 10,
        "hidden_layers": (32,),
        "latent_dim": 8,
    },
}


def files(root: Path) -> list[Path]:
    found = [
        p for sub in ("valve1", "valve2", "other") for p in (root / "skab" / sub).glob("*.csv")
    ]
    return sorted(found, key=lambda p: (p.parent.name, int(p.stem)))


def run_file(path: Path, settings: dict, args: argparse.Namespace, seed: int) -> np.ndarray:
    """Confusion counts ``[tp, fp, fn, tn]`` on the test part of one file."""
    frame = pd.read_csv(path, sep=";")
    train, test = frame.iloc[:N_TRAIN], frame.iloc[N_TRAIN:]
    detector = AutoencoderDetector(
        **settings,
        time_column="datetime",
        # SKAB's rows are scored as consecutive samples, as its leaderboard methods do; a
        # split at a gap would leave short stretches unscored.
        gap_policy="ignore",
        feature_columns=SENSORS,
        key_columns=["anomaly", "changepoint"],
        point_reduction=args.point_reduction,
        epochs=args.epochs,
        batch_size=32,
        learning_rate=1e-3,
        patience=args.patience,
        random_state=seed,
        verbose=False,
    ).fit(
        train,
        quantile=args.quantile,
        validation_fraction=args.validation_fraction,
        calibration_fraction=args.calibration_fraction,
    )
    flagged = detector.predict(test, context=detector.next_context(train))
    truth = test["anomaly"].to_numpy() == 1
    return np.array(
        [
            (flagged & truth).sum(),
            (flagged & ~truth).sum(),
            (~flagged & truth).sum(),
            (~flagged & ~truth).sum(),
        ]
    )


def scores(counts: np.ndarray) -> tuple[float, float, float]:
    tp, fp, fn, tn = counts
    return tp / (tp + (fp + fn) / 2), 100 * fp / (fp + tn), 100 * fn / (fn + tp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quantile", type=float, default=0.99)
    parser.add_argument("--calibration-fraction", type=float, default=0.25)
    parser.add_argument("--validation-fraction", type=float, default=0.1)
    parser.add_argument("--point-reduction", default="mean")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument(
        "--limit", type=int, default=None, help="only the first N files (smoke run)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    paths = files(args.datasets)[: args.limit]
    if not paths:
        raise SystemExit(f"no SKAB files under {args.datasets / 'skab'}")

    table = Table(title=f"SKAB outlier detection, {len(paths)} files, seeds {args.seeds}")
    for column in ("algorithm", "F1", "FAR %", "MAR %", "seconds"):
        table.add_column(column)
    for name in args.models:
        started = time.perf_counter()
        per_seed = []
        for seed in args.seeds:
            counts = sum(
                (
                    run_file(p, MODELS[name], args, seed)
                    for p in track(paths, f"{name} seed {seed}")
                ),
                start=np.zeros(4, dtype=np.int64),
            )
            per_seed.append(scores(counts))
            print(
                f"{name} seed {seed}: F1 {per_seed[-1][0]:.3f} FAR {per_seed[-1][1]:.2f} MAR {per_seed[-1][2]:.2f} counts {counts.tolist()}"
            )
        f1, far, mar = np.mean(per_seed, axis=0)
        table.add_row(
            f"anomaly {name}",
            f"{f1:.3f}",
            f"{far:.2f}",
            f"{mar:.2f}",
            f"{time.perf_counter() - started:.0f}",
        )
    for name, (f1, far, mar) in LEADERBOARD.items():
        table.add_row(f"{name} (published)", f"{f1:.2f}", f"{far:.2f}", f"{mar:.2f}", "")
    Console().print(table)
    print(
        f"settings: quantile {args.quantile}, calibration_fraction {args.calibration_fraction}, "
        f"point_reduction {args.point_reduction}, epochs {args.epochs}, patience {args.patience}"
    )


if __name__ == "__main__":
    main()
