"""Training and scoring throughput of AutoencoderDetector on each available device.

Generates a 32-column float32 table (correlated columns), trains a 32-64-16 dense autoencoder
for a few epochs and scores the table, on the CPU and on CUDA when present. Prints samples/s
and the CUDA/CPU ratio measured in the same run.

Run: python benchmarks/train_throughput.py [--rows 200000] [--epochs 3] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from anomaly import AutoencoderDetector


def make_data(rows: int, width: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(rows, 8)).astype(np.float32)
    mixing = rng.normal(size=(8, width)).astype(np.float32)
    return latent @ mixing + 0.1 * rng.normal(size=(rows, width)).astype(np.float32)


def measure(device: str, X: np.ndarray, epochs: int, batch_size: int) -> dict[str, float]:
    det = AutoencoderDetector(
        hidden_layers=(64,),
        latent_dim=16,
        epochs=epochs,
        batch_size=batch_size,
        patience=epochs + 1,
        device=device,
        verbose=False,
    )
    det.fit(X, validation_fraction=0.0, calibration_fraction=0.05)
    det.score_samples(X[:10_000])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    det.score_samples(X)
    if device == "cuda":
        torch.cuda.synchronize()
    score_rate = len(X) / (time.perf_counter() - start)
    return {"train": det.history_.samples_per_second, "score": score_rate}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    X = make_data(args.rows)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = {}
    for device in devices:
        measure(
            device, X[:20_000], 1, args.batch_size
        )  # warm-up: CUDA context, kernels, thread pools
        results[device] = measure(device, X, args.epochs, args.batch_size)
        name = (
            torch.cuda.get_device_name()
            if device == "cuda"
            else f"{torch.get_num_threads()} CPU threads"
        )
        print(
            f"{device:5s} ({name}): train {results[device]['train']:,.0f} samples/s, "
            f"score_samples {results[device]['score']:,.0f} rows/s",
            flush=True,
        )
    if "cuda" in results:
        print(
            f"cuda/cpu ratio: train {results['cuda']['train'] / results['cpu']['train']:.1f}x, "
            f"score {results['cuda']['score'] / results['cpu']['score']:.1f}x"
        )


if __name__ == "__main__":
    main()
