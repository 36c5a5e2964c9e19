"""One-class evaluation on ADBench classical tabular datasets: AutoencoderDetector vs IsolationForest.

Protocol (../shared/datasets/README.md): per seed, split the normal rows 60/40; of the 60%, 80% fit
and 20% calibrate the 95th-percentile threshold; the test set is the other 40% of normals plus all
anomalies; StandardScaler fitted on the fit rows. Reports AUROC, AUPR and the false-positive rate
at the calibrated threshold on test normals, averaged over seeds. Both detectors see the same splits.

AutoencoderDetector takes the 60% part itself (calibration_fraction=0.2; of the rest, 1/8 goes to
early stopping), so its scaler is fitted on its fit rows only.

Methods: IsolationForest (200 trees), AutoencoderDetector with defaults, and with n_estimators=5;
``ae_old_width`` / ``ae_half_width`` are the default detector with the code width of the earlier
rule (the input width clipped to 8..32) or half the width (<= 32) instead of today's width - 1
(<= 32), for comparing the rules.

Run: python benchmarks/adbench_oneclass.py [--datasets DIR] [--seeds 3] [--pyod] [--all]
     [--methods iforest autoencoder ae_old_width] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from anomaly import AutoencoderDetector, QuantileThreshold

DATASETS = ("2_annthyroid", "6_cardio", "30_satellite", "32_shuttle", "38_thyroid")
ALL_DATASETS = (
    "2_annthyroid",
    "6_cardio",
    "7_Cardiotocography",
    "12_fault",
    "19_landsat",
    "20_letter",
    "27_PageBlocks",
    "28_pendigits",
    "30_satellite",
    "32_shuttle",
    "35_SpamBase",
    "38_thyroid",
    "40_vowels",
    "44_Wilt",
    "47_yeast",
)
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the train part (60% of normals), of which 80% fit / 20% calibrate, and the test part."""
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(y == 0))
    n_train = int(0.6 * len(normal))
    train, test_normal = normal[:n_train], normal[n_train:]
    test = np.concatenate([test_normal, np.flatnonzero(y == 1)])
    return train, test, test_normal


def metrics(y_test: np.ndarray, scores: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    return {
        "auroc": roc_auc_score(y_test, scores),
        "aupr": average_precision_score(y_test, scores),
        "fpr": float(flagged[y_test == 0].mean()),
    }


def _fit_calibrate_test(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int, fit_and_score
) -> dict[str, float]:
    """Baseline protocol: 80/20 fit/calibrate split of ``train``, scaler on the fit rows.

    ``fit_and_score(X_fit)`` trains a model and returns a function from rows to scores
    (higher = more anomalous).
    """
    rng = np.random.default_rng(seed + 1000)
    order = rng.permutation(train)
    n_cal = round(0.2 * len(order))
    cal, fit = order[:n_cal], order[n_cal:]
    scaler = StandardScaler().fit(X[fit])
    score = fit_and_score(scaler.transform(X[fit]))
    threshold = QuantileThreshold(0.95).fit(score(scaler.transform(X[cal])))
    scores = score(scaler.transform(X[test]))
    return metrics(y[test], scores, threshold.predict(scores))


def run_iforest(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> dict[str, float]:
    def fit_and_score(X_fit: np.ndarray):
        model = IsolationForest(n_estimators=200, random_state=seed).fit(X_fit)
        return lambda rows: -model.score_samples(rows)

    return _fit_calibrate_test(X, y, train, test, seed, fit_and_score)


def run_autoencoder(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int, **params
) -> dict[str, float]:
    det = AutoencoderDetector(random_state=seed, verbose=False, **params)
    det.fit(X[train], quantile=0.95, calibration_fraction=0.2, validation_fraction=0.1)
    scores = det.score_samples(X[test])
    return metrics(y[test], scores, scores > det.threshold_)


def run_pyod(
    X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, seed: int
) -> dict[str, float]:
    from pyod.models.auto_encoder import AutoEncoder

    def fit_and_score(X_fit: np.ndarray):
        model = AutoEncoder(epoch_num=30, batch_size=64, random_state=seed, verbose=0).fit(X_fit)
        return model.decision_function

    return _fit_calibrate_test(X, y, train, test, seed, fit_and_score)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--datasets", type=Path, default=Path(os.environ.get("ANOMALY_DATASETS", DEFAULT_DIR))
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--pyod", action="store_true", help="also run PyOD's AutoEncoder (pip install pyod==3.6.7)"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="dataset names to run (default: all five)"
    )
    parser.add_argument("--all", action="store_true", help="run all fifteen ADBench sets")
    parser.add_argument(
        "--methods", nargs="*", default=None, help="methods to run (default: all but ae_old_width)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    folder = args.datasets / "adbench"
    if not folder.is_dir():
        raise SystemExit(
            f"{folder}: ADBench files not found; pass --datasets or set ANOMALY_DATASETS"
        )

    methods = {
        "iforest": run_iforest,
        "autoencoder": run_autoencoder,
        "ae_ensemble5": lambda *a: run_autoencoder(*a, n_estimators=5),
    }
    if args.pyod:
        methods["pyod_ae"] = run_pyod
    every = {
        **methods,
        "pyod_ae": run_pyod,
        "ae_old_width": lambda X, *a: run_autoencoder(
            X, *a, latent_dim=min(32, max(8, X.shape[1]))
        ),
        "ae_half_width": lambda X, *a: run_autoencoder(
            X, *a, latent_dim=max(1, min(32, -(-X.shape[1] // 2)))
        ),
    }
    if args.methods:
        unknown = sorted(set(args.methods) - set(every))
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; choose from {sorted(every)}")
        methods = {m: every[m] for m in args.methods}
    rows = []
    started = time.perf_counter()
    for name in args.only or (ALL_DATASETS if args.all else DATASETS):
        data = np.load(folder / f"{name}.npz", allow_pickle=False)
        X, y = data["X"].astype(np.float64), data["y"].astype(int)
        for seed in range(args.seeds):
            train, test, _ = split(y, seed)
            for method, fn in methods.items():
                t0 = time.perf_counter()
                result = fn(X, y, train, test, seed)
                rows.append(
                    {
                        "dataset": name,
                        "seed": seed,
                        "method": method,
                        **result,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    f"{name:14s} seed {seed} {method:12s} auroc {result['auroc']:.3f} aupr {result['aupr']:.3f} "
                    f"fpr@thr {result['fpr']:.3f} ({rows[-1]['seconds']:.1f}s)",
                    flush=True,
                )
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["dataset", "method"])[["auroc", "aupr", "fpr", "seconds"]]
        .mean()
        .unstack("method")
    )
    pd.set_option("display.width", 200)
    print("\nMean over seeds:")
    print(summary.round(3).to_string())
    print("\nMean over datasets:")
    print(table.groupby("method")[["auroc", "aupr", "fpr"]].mean().round(3).to_string())
    print(f"\nTotal run time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
