"""Figures a reviewer looks at: calibration errors against the threshold, loss curves, errors per feature, image grids.

Each function returns a matplotlib Figure and touches no files; callers save or log it.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless backend, imported on first use.

    Not at module level: scoring imports this module for :func:`heat map colours <heatmap_rgb>`
    and must not pay pyplot's second of start-up before its first row.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless: flows and CI have no display
    import matplotlib.pyplot as plt

    return plt


def score_histogram(
    calibration_scores: np.ndarray,
    threshold: float,
    quantile: float,
    batch_scores: np.ndarray | None = None,
    title: str = "Calibration reconstruction errors",
) -> Figure:
    """Histogram of scores (log-spaced bins) with the threshold as a vertical line.

    With ``batch_scores``: the batch's counts on a log scale, so a flagged tail of a few rows
    stays visible, beside the calibration errors scaled to the batch's size for comparison,
    the region above the threshold shaded, and the flagged share written against the expected.
    """
    fig, ax = _pyplot().subplots(figsize=(7, 4), layout="constrained")
    calibration = np.asarray(calibration_scores, dtype=float)
    batch = None if batch_scores is None else np.asarray(batch_scores, dtype=float)
    values = (
        calibration if batch is None or not len(batch) else np.concatenate([calibration, batch])
    )
    positive = values[values > 0]
    low, high = (positive.min(), positive.max()) if len(positive) else (1e-6, 1.0)
    bins = np.geomspace(low, max(high, low * 1.01, threshold * 1.01), 60).tolist()
    line = f"threshold q={quantile:g}: {threshold:.4g}"
    if batch is None or not len(batch):
        ax.hist(
            calibration,
            bins=bins,
            alpha=0.7,
            color="tab:blue",
            label=f"calibration (n={len(calibration)})",
        )
        ax.set_ylabel("rows")
    else:
        ax.hist(
            batch, bins=bins, alpha=0.6, color="tab:orange", label=f"scored batch (n={len(batch)})"
        )
        if len(calibration):
            # Scaled to the batch's size: where the two differ is where the batch is unusual.
            weights = np.full(len(calibration), len(batch) / len(calibration))
            ax.hist(
                calibration,
                bins=bins,
                weights=weights,
                histtype="step",
                linewidth=1.5,
                color="tab:blue",
                label=f"calibration, scaled to the batch (n={len(calibration)})",
            )
        ax.set_yscale("log")
        ax.set_ylabel("rows (log scale)")
        ax.axvspan(threshold, bins[-1], color="tab:red", alpha=0.08)
        flagged = int((batch > threshold).sum())
        ax.text(
            0.99,
            0.97,
            f"flagged {flagged / len(batch):.1%} ({flagged} of {len(batch)})\n"
            f"expected on normal data {1 - quantile:.1%}",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=9,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"},
        )
    ax.axvline(threshold, color="tab:red", linestyle="--", label=line)
    ax.set_xscale("log")
    ax.set_xlabel("anomaly score (reconstruction error)")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def loss_curves(train_loss: Sequence[float], val_loss: Sequence[float], best_epoch: int) -> Figure:
    """Training and validation loss per epoch, log scale, with the kept epoch marked."""
    fig, ax = _pyplot().subplots(figsize=(7, 4), layout="constrained")
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
    fig, ax = _pyplot().subplots(figsize=(7, max(2.5, 0.35 * len(names) + 1)), layout="constrained")
    ax.barh([names[i] for i in order][::-1], np.asarray(mean_errors)[order][::-1], color="tab:blue")
    ax.set_xlabel("mean reconstruction error (held-out normal rows)")
    ax.set_title("Error per feature")
    return fig


def series_review(
    times: np.ndarray,
    values: np.ndarray,
    feature_names: Sequence[str],
    scores: np.ndarray,
    threshold: float,
    title: str = "Series with anomaly scores",
    max_features: int = 8,
) -> Figure:
    """Each feature over time above the anomaly score, threshold line and flagged spans shaded.

    Parameters
    ----------
    times : array (n_points,)
        Timestamps (datetime64 or numbers) in plotting order.
    values : array (n_points, n_features)
    scores : array (n_points,)
        NaN where a point has no score (e.g. rejected).
    """
    n_shown = min(len(feature_names), max_features)
    fig, axes = _pyplot().subplots(
        n_shown + 1, 1, figsize=(10, 1.4 * (n_shown + 1) + 0.6), sharex=True, layout="constrained"
    )
    flagged = np.nan_to_num(scores, nan=-np.inf) > threshold
    # Contiguous flagged runs as [start, end) index pairs, shaded on every axis.
    edges = np.flatnonzero(np.diff(np.r_[0, flagged.astype(np.int8), 0]))
    spans = list(zip(edges[::2], edges[1::2], strict=True))
    for i, ax in enumerate(axes[:-1]):
        ax.plot(times, values[:, i], linewidth=0.8, color="tab:blue")
        ax.set_ylabel(str(feature_names[i]), rotation=0, ha="right", fontsize=8)
    score_ax = axes[-1]
    score_ax.plot(times, scores, linewidth=0.8, color="black")
    score_ax.axhline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:.4g}")
    score_ax.set_yscale("log")
    score_ax.set_ylabel("score", rotation=0, ha="right")
    score_ax.legend(loc="upper left", fontsize=8)
    for ax in axes:
        for start, end in spans:
            ax.axvspan(times[start], times[min(end, len(times) - 1)], color="tab:red", alpha=0.2)
    axes[0].set_title(f"{title} ({int(flagged.sum())} of {len(scores)} points flagged)")
    return fig


def latent_pca(
    latent: np.ndarray, scores: np.ndarray, threshold: float, what: str = "calibration rows"
) -> Figure:
    """Latent codes ``(n, latent_dim)`` on their first two principal components, coloured by score.

    Each point's colour is its anomaly score ``(n,)`` (a continuous colour map, log-scaled when
    every score is positive, with a colour bar marking the threshold); points above the threshold
    are drawn on top with a red ring, so a reviewer sees whether high scores sit apart from the
    normal cloud or inside it, and whether they drift there gradually. ``what`` names the points
    (``"calibration windows"``, ``"calibration images"``) in the title and axis labels.
    """
    from matplotlib.colors import LogNorm, Normalize
    from sklearn.decomposition import PCA

    codes = np.asarray(latent, dtype=np.float64)
    values = np.asarray(scores, dtype=np.float64)
    above = values > threshold
    fig, ax = _pyplot().subplots(figsize=(6.5, 5), layout="constrained")
    if codes.shape[1] >= 2 and len(codes) >= 2:
        pca = PCA(n_components=2).fit(codes)
        xy = pca.transform(codes)
        ax.set_xlabel(f"PC1 ({pca.explained_variance_ratio_[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({pca.explained_variance_ratio_[1]:.0%} of variance)")
    else:  # a 1-D latent space: plot it against the sample's position
        xy = np.column_stack([codes[:, 0], np.arange(len(codes))])
        ax.set_xlabel("latent code")
        ax.set_ylabel("position in the sample")
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if len(finite) else 0.0
    high = max(float(finite.max()) if len(finite) else 1.0, threshold)
    # Reconstruction errors are heavy-tailed: a log scale keeps the normal bulk from one colour.
    norm = (
        LogNorm(vmin=min(low, threshold), vmax=high)
        if low > 0 and threshold > 0
        else Normalize(vmin=min(low, threshold), vmax=high)
    )
    # Low scores first so high ones are drawn over the cloud rather than hidden in it.
    order = np.argsort(np.nan_to_num(values, nan=-np.inf), kind="stable")
    below_idx, above_idx = order[~above[order]], order[above[order]]
    points = ax.scatter(
        xy[below_idx, 0],
        xy[below_idx, 1],
        c=values[below_idx],
        cmap="viridis",
        norm=norm,
        s=8,
        alpha=0.7,
        linewidths=0,
        label=f"below threshold ({len(below_idx)})",
    )
    ax.scatter(
        xy[above_idx, 0],
        xy[above_idx, 1],
        c=values[above_idx],
        cmap="viridis",
        norm=norm,
        s=28,
        edgecolors="tab:red",
        linewidths=1.2,
        label=f"above threshold ({len(above_idx)})",
    )
    bar = fig.colorbar(points, ax=ax, label="anomaly score")
    bar.ax.axhline(threshold, color="tab:red", linewidth=2)
    ax.set_title(f"Latent space of {len(codes)} {what}, threshold {threshold:.4g}", fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return fig


def image_grid(
    images: np.ndarray,
    reconstructions: np.ndarray,
    error_maps: np.ndarray,
    scores: np.ndarray | None = None,
    title: str = "Images, reconstructions and error maps",
) -> Figure:
    """Three rows per column: the image ``(C, H, W)``, its reconstruction, its error map ``(H, W)``.

    Error maps share one colour scale (the largest error shown), so columns compare directly.
    """
    n = len(images)
    fig, axes = _pyplot().subplots(
        3, max(n, 1), figsize=(1.6 * max(n, 1) + 1, 5.2), squeeze=False, layout="constrained"
    )
    vmax = float(np.max(error_maps)) if n else 1.0
    for j in range(n):
        for i, (panel, cmap) in enumerate(
            ((images[j], "gray"), (reconstructions[j], "gray"), (error_maps[j], "inferno"))
        ):
            shown = panel if panel.ndim == 2 else np.moveaxis(panel, 0, -1).squeeze(-1)
            if cmap == "gray" and shown.ndim == 3:  # RGB
                axes[i, j].imshow(np.clip(shown, 0, 1))
            else:
                axes[i, j].imshow(shown, cmap=cmap, vmin=0, vmax=vmax if cmap == "inferno" else 1)
        if scores is not None:
            axes[0, j].set_title(f"{scores[j]:.3g}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for i, label in enumerate(("image", "reconstruction", "error")):
        axes[i, 0].set_ylabel(label)
    fig.suptitle(title)
    return fig


def heatmap_rgb(error_map: np.ndarray, vmax: float) -> np.ndarray:
    """An error map ``(H, W)`` as an RGB heat map ``(H, W, 3)`` uint8 (inferno, 0 to ``vmax``)."""
    scaled = np.clip(error_map / vmax, 0, 1) if vmax > 0 else np.zeros_like(error_map)
    import matplotlib

    rgba = matplotlib.colormaps["inferno"](scaled)
    return (rgba[..., :3] * 255).round().astype(np.uint8)


class HeatmapFigure:
    """One figure redrawn for each heat map: the image in grey, its error map over it, a colour bar.

    Every map shares the fixed scale 0 to ``vmax`` (pixel error), so colours compare across
    images. A map's opacity grows with its error, so the image shows through where the
    reconstruction is good. The figure is made once and redrawn, which is several times
    faster than a figure per map, and it is drawn without pyplot (no global figure registry).
    Small images are shown enlarged (nearest-neighbour, pixels stay visible): the PNG is
    about ``size_px`` wide whatever the image size.
    """

    def __init__(self, vmax: float, size_px: int = 360):
        _pyplot()  # the Agg backend, set before the first figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure

        self.vmax = float(vmax) if vmax > 0 else 1.0
        dpi = 100
        self.figure = Figure(figsize=(size_px / dpi, 0.85 * size_px / dpi), dpi=dpi)
        self.canvas = FigureCanvasAgg(self.figure)
        self.ax = self.figure.add_axes((0.02, 0.03, 0.72, 0.82))
        cax = self.figure.add_axes((0.80, 0.08, 0.05, 0.72))
        self.norm = Normalize(0.0, self.vmax, clip=True)
        bar = self.figure.colorbar(ScalarMappable(self.norm, "inferno"), cax=cax, extend="max")
        bar.set_label("pixel error", fontsize=8)
        bar.ax.tick_params(labelsize=7)

    def render(self, image: np.ndarray, error_map: np.ndarray, title: str) -> np.ndarray:
        """The heat map of ``image`` ``(C, H, W)`` in [0, 1] and its ``error_map`` ``(H, W)`` as
        RGB ``(height_px, width_px, 3)`` uint8."""
        grey = np.asarray(image, dtype=np.float32).mean(axis=0)
        errors = np.asarray(error_map, dtype=np.float32)
        ax = self.ax
        ax.clear()
        ax.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        opacity = 0.25 + 0.65 * np.clip(errors / self.vmax, 0, 1)
        ax.imshow(errors, cmap="inferno", norm=self.norm, alpha=opacity, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=8)
        self.canvas.draw()
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()
