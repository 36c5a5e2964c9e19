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

from anomaly import AutoencoderDetector, QuantileThreshold

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


def run_file(
    path: Path, settings: dict, args: argparse.Namespace, seed: int
) -> dict[tuple[float, float], np.ndarray]:
    """Confusion counts ``[tp, fp, fn, tn]`` on the test part of one file per (quantile, margin).

    One fit per file: the threshold of each quantile comes from the same calibration scores.
    """
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
        quantile=max(args.quantiles),
        validation_fraction=args.validation_fraction,
        calibration_fraction=args.calibration_fraction,
    )
    test_scores = detector.score_samples(test, context=detector.next_context(train))
    truth = test["anomaly"].to_numpy() == 1
    calibration = detector.thresholder_.calibration_scores_
    out = {}
    for q in args.quantiles:
        threshold = QuantileThreshold(q).fit(calibration).threshold_
        for margin in args.margins:
            flagged = test_scores > threshold * margin
            out[(q, margin)] = np.array(
                [
                    (flagged & truth).sum(),
                    (flagged & ~truth).sum(),
                    (~flagged & truth).sum(),
                    (~flagged & ~truth).sum(),
                ]
            )
    return out


def scores(counts: np.ndarray) -> tuple[float, float, float]:
    tp, fp, fn, tn = counts
    return tp / (tp + (fp + fn) / 2), 100 * fp / (fp + tn), 100 * fn / (fn + tp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--quantiles", type=float, nargs="+", default=[0.95, 0.98, 0.99])
    parser.add_argument(
        "--margins",
        type=float,
        nargs="+",
        default=[1.0, 4 / 3, 2.0],
        help="threshold multipliers (SKAB's Conv-AE baseline uses 4/3 on its threshold)",
    )
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
    for column in ("algorithm", "quantile", "margin", "F1", "FAR %", "MAR %"):
        table.add_column(column)
    for name in args.models:
        started = time.perf_counter()
        totals: dict[tuple[float, float], list[np.ndarray]] = {}
        for seed in args.seeds:
            seed_counts: dict[tuple[float, float], np.ndarray] = {}
            for path in track(paths, f"{name} seed {seed}"):
                for key, counts in run_file(path, MODELS[name], args, seed).items():
                    seed_counts[key] = seed_counts.get(key, 0) + counts
            for key, counts in seed_counts.items():
                totals.setdefault(key, []).append(np.asarray(scores(counts)))
                f1, far, mar = scores(counts)
                print(
                    f"{name} seed {seed} q={key[0]} margin={key[1]:.3g}: F1 {f1:.3f} FAR {far:.2f} MAR {mar:.2f} counts {counts.tolist()}"
                )
        seconds = time.perf_counter() - started
        for (q, margin), values in totals.items():
            f1, far, mar = np.mean(values, axis=0)
            table.add_row(
                f"anomaly {name}",
                f"{q:g}",
                f"{margin:.3g}",
                f"{f1:.3f}",
                f"{far:.2f}",
                f"{mar:.2f}",
            )
        print(f"{name}: {seconds:.0f} s for {len(paths)} files x {len(args.seeds)} seed(s)")
    for name, (f1, far, mar) in LEADERBOARD.items():
        table.add_row(f"{name} (published)", "", "", f"{f1:.2f}", f"{far:.2f}", f"{mar:.2f}")
    Console().print(table)
    print(
        f"settings: calibration_fraction {args.calibration_fraction}, point_reduction "
        f"{args.point_reduction}, epochs {args.epochs}, patience {args.patience}"
    )


if __name__ == "__main__":
    main()
