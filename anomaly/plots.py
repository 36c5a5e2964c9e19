"""Figures a reviewer looks at: calibration errors against the threshold, loss curves, errors per feature.

Each function returns a matplotlib Figure and touches no files; callers save or log it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: flows and CI have no display

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def score_histogram(
    calibration_scores: np.ndarray,
    threshold: float,
    quantile: float,
    batch_scores: np.ndarray | None = None,
    title: str = "Calibration reconstruction errors",
) -> Figure:
    """Histogram of calibration scores (log-spaced bins) with the threshold as a vertical line."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    data = [np.asarray(calibration_scores, dtype=float)]
    if batch_scores is not None and len(batch_scores):
        data.append(np.asarray(batch_scores, dtype=float))
    positive = np.concatenate(data)
    positive = positive[positive > 0]
    low, high = (positive.min(), positive.max()) if len(positive) else (1e-6, 1.0)
    bins = np.geomspace(low, max(high, low * 1.01, threshold * 1.01), 60).tolist()
    # With a batch beside it, compare shapes (densities): the counts differ by design.
    compare = len(data) > 1
    styles = [("calibration", "tab:blue", 0.7), ("scored batch", "tab:orange", 0.5)]
    for values, (label, color, alpha) in zip(data, styles, strict=False):
        ax.hist(
            values,
            bins=bins,
            alpha=alpha,
            label=f"{label} (n={len(values)})",
            color=color,
            density=compare,
        )
    ax.axvline(
        threshold,
        color="tab:red",
        linestyle="--",
        label=f"threshold q={quantile:g}: {threshold:.4g}",
    )
    ax.set_xscale("log")
    ax.set_xlabel("anomaly score (reconstruction error)")
    ax.set_ylabel("density" if compare else "rows")
    ax.set_title(title)
    ax.legend()
    return fig


def loss_curves(train_loss: Sequence[float], val_loss: Sequence[float], best_epoch: int) -> Figure:
    """Training and validation loss per epoch, log scale, with the kept epoch marked."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    epochs = np.arange(1, len(train_loss) + 1)
    ax.plot(epochs, train_loss, label="train")
    if len(val_loss):
        ax.plot(epochs, val_loss, label="validation")
    if best_epoch:
        ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept epoch {best_epoch}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Loss per epoch")
    ax.legend()
    return fig


def feature_error_bars(names: Sequence[str], mean_errors: np.ndarray) -> Figure:
    """Mean reconstruction error per input feature on calibration data, largest first."""
    order = np.argsort(mean_errors)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(names) + 1)), layout="constrained")
    ax.barh([names[i] for i in order][::-1], np.asarray(mean_errors)[order][::-1], color="tab:blue")
    ax.set_xlabel("mean reconstruction error (held-out normal rows)")
    ax.set_title("Error per feature")
    return fig
