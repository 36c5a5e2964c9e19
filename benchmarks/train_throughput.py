"""Training and scoring throughput of AutoencoderDetector, against PyOD's AutoEncoder.

Generates a 32-column float32 table (correlated columns) and, for each batch size, fits
``AutoencoderDetector`` and PyOD 3.6.7's ``AutoEncoder`` with the same 32-64-16-64-32 network
(no batch norm, no dropout, Adam at lr 1e-3), the same batch size and the same epochs, on the
same rows; then scores the table with ``score_samples`` and PyOD's ``decision_function``.
Prints samples/s of each and the ratios, all measured in this run. Training samples/s is
(rows trained on x epochs) / wall time of ``fit``, which for both includes their
preprocessing and their scoring of the training data at the end.

``--device`` picks where our detector runs (PyOD runs on the CPU, its default here): ``auto``
measures the CPU and, when present, CUDA, and reports the CUDA/CPU ratio. ``--compile`` also
times ``score_samples`` with the network wrapped in ``torch.compile``.

Run: python benchmarks/train_throughput.py [--rows 50000] [--epochs 3] [--batch-sizes 32,256]
(needs the bench extra: pip install -e ".[bench]")
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomaly import AutoencoderDetector

HIDDEN, LATENT = 64, 16


def make_data(rows: int, width: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 8)).astype(np.float32)
    mixing = rng.normal(size=(8, width)).astype(np.float32)
    return latent @ mixing + 0.1 * rng.normal(size=(rows, width)).astype(np.float32)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ours(
    device: str, X: np.ndarray, epochs: int, batch_size: int
) -> tuple[float, float, AutoencoderDetector]:
    det = AutoencoderDetector(
        hidden_layers=(HIDDEN,),
        latent_dim=LATENT,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=1e-3,
        patience=epochs + 1,
        device=device,
        verbose=False,
    )
    start = time.perf_counter()
    det.fit(X, validation_fraction=0.0, calibration_fraction=0.05)
    sync(device)
    seconds = time.perf_counter() - start
    return det.fit_info_["n_fit"] * epochs / seconds, det.history_.samples_per_second, det


def pyod(X: np.ndarray, epochs: int, batch_size: int):
    from pyod.models.auto_encoder import AutoEncoder

    model = AutoEncoder(
        hidden_neuron_list=[HIDDEN, LATENT],
        epoch_num=epochs,
        batch_size=batch_size,
        lr=1e-3,
        batch_norm=False,
        dropout_rate=0.0,
        device="cpu",
        verbose=0,
    )
    start = time.perf_counter()
    model.fit(X)
    seconds = time.perf_counter() - start
    trained = (len(X) // batch_size) * batch_size  # PyOD drops the last partial batch
    return trained * epochs / seconds, model


def score_rate(fn, X: np.ndarray, device: str = "cpu", repeats: int = 2) -> float:
    fn(X[:10_000])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn(X)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return len(X) / best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=50_000, help="training rows")
    parser.add_argument("--score-rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-sizes", default="32,256", help="comma-separated")
    parser.add_argument(
        "--device", default="auto", help="auto (CPU and CUDA if present), cpu, cuda"
    )
    parser.add_argument("--no-pyod", action="store_true", help="only our detector")
    parser.add_argument("--compile", action="store_true", help="also score with torch.compile")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for both libraries (default: torch's choice); on a shared "
        "machine 1 avoids OpenMP threads stalling each other when they lose their core",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    X = make_data(max(args.rows, args.score_rows))
    X_fit, X_score = X[: args.rows], X[: args.score_rows]
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        devices = [args.device]
    print(
        f"{args.rows:,} rows x 32, network 32-{HIDDEN}-{LATENT}-{HIDDEN}-32, {args.epochs} epochs; "
        f"CPU: {torch.get_num_threads()} torch threads; torch {torch.__version__}"
    )
    for device in devices:
        if device.startswith("cuda"):
            print(f"cuda: {torch.cuda.get_device_name()}")
        ours(device, X_fit[:5_000], 1, 256)  # warm-up: thread pools, CUDA context
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        rates: dict[str, float] = {}
        det = None
        for device in devices:
            fit_rate, loop_rate, det = ours(device, X_fit, args.epochs, batch_size)
            rates[device] = fit_rate
            print(
                f"batch {batch_size:4d} | ours ({device}): train {fit_rate:>11,.0f} samples/s "
                f"(training loop alone {loop_rate:,.0f})"
            )
        if "cuda" in rates:
            print(f"batch {batch_size:4d} | cuda/cpu train: {rates['cuda'] / rates['cpu']:.1f}x")
        if not args.no_pyod:
            pyod_rate, model = pyod(X_fit, args.epochs, batch_size)
            print(
                f"batch {batch_size:4d} | PyOD AutoEncoder: train {pyod_rate:>11,.0f} samples/s "
                f"-> ours (cpu) / PyOD = {rates[devices[0]] / pyod_rate:.1f}x"
            )
            ours_score = score_rate(det.score_samples, X_score, devices[-1])
            pyod_score = score_rate(model.decision_function, X_score)
            print(
                f"batch {batch_size:4d} | score_samples ({devices[-1]}) {ours_score:>11,.0f} rows/s, "
                f"PyOD decision_function {pyod_score:,.0f} rows/s -> {ours_score / pyod_score:.1f}x"
            )
    if args.compile and det is not None:
        eager = score_rate(det.score_samples, X_score, devices[-1])
        det.module_ = torch.compile(det.module_)
        start = time.perf_counter()
        det.score_samples(X_score[:10_000])
        compile_seconds = time.perf_counter() - start
        compiled = score_rate(det.score_samples, X_score, devices[-1])
        print(
            f"torch.compile: score_samples {compiled:,.0f} rows/s vs eager {eager:,.0f} "
            f"({compiled / eager:.2f}x) after {compile_seconds:.0f}s of compiling"
        )


if __name__ == "__main__":
    main()
