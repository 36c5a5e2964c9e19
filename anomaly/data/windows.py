"""Sliding windows over multivariate series, and folding per-window errors back onto points."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

PointReduction = Literal["mean", "max", "min", "last"]
POINT_REDUCTIONS: tuple[str, ...] = ("mean", "max", "min", "last")


def sliding_windows(values: np.ndarray, window: int, stride: int = 1) -> np.ndarray:
    """Windows of ``window`` consecutive points, every ``stride`` points, as a read-only view.

    Parameters
    ----------
    values : ndarray of shape (n_points, n_features)

    Returns
    -------
    ndarray of shape (n_windows, window, n_features)
        ``n_windows = (n_points - window) // stride + 1`` (0 when the series is shorter than a
        window). Window ``i`` starts at point ``i * stride``.
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    if len(values) < window:
        return np.zeros((0, window, values.shape[1]), dtype=values.dtype)
    view = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)
    return view[::stride].transpose(0, 2, 1)


class PointFold:
    """Accumulates per-step errors of consecutive stride-1 windows into per-point values.

    Window ``s`` covers points ``s .. s + window - 1``. Each point's value is a named reduction
    over the windows that cover it:

    - ``mean``: the point's error averaged over every window that covers it (up to ``window``),
      which smooths one window's bad reconstruction;
    - ``max``: the largest of those errors;
    - ``min``: the smallest, so a point counts as anomalous only when every window covering it
      does (a persistence rule: lone spikes in one window are ignored);
    - ``last``: the point's error in the window that ends at it, so a score depends only on the
      point and the ``window - 1`` before it (causal: a later batch never changes it). Points
      before the first full window take their error in the first window.

    Windows may be added in batches (in order or not), so a long series never needs all its
    windows in memory at once.
    """

    def __init__(
        self,
        n_points: int,
        window: int,
        n_channels: int,
        reduction: PointReduction,
        device: torch.device | str = "cpu",
    ):
        if reduction not in POINT_REDUCTIONS:
            raise ValueError(
                f"point reduction must be one of {POINT_REDUCTIONS}, got {reduction!r}"
            )
        self.window, self.reduction = window, reduction
        fill = {"max": -torch.inf, "min": torch.inf}.get(reduction, 0.0)
        self.values = torch.full((n_points, n_channels), fill, device=device)
        self.counts = torch.zeros((n_points, 1), device=device)

    def add(self, errors: torch.Tensor, first_window: int) -> None:
        """Add ``errors`` of shape ``(n_windows, window, n_channels)`` for windows starting at ``first_window``."""
        n, w = len(errors), self.window
        if n == 0:
            return
        start = first_window
        if self.reduction == "last":
            self.values[start + w - 1 : start + w - 1 + n] = errors[:, -1]
            self.counts[start + w - 1 : start + w - 1 + n] = 1
            if start == 0:
                self.values[: w - 1] = errors[0, : w - 1]
                self.counts[: w - 1] = 1
            return
        for k in range(w):  # one vector op per offset, not one per window
            rows = slice(start + k, start + k + n)
            if self.reduction == "mean":
                self.values[rows] += errors[:, k]
            elif self.reduction == "max":
                self.values[rows] = torch.maximum(self.values[rows], errors[:, k])
            else:
                self.values[rows] = torch.minimum(self.values[rows], errors[:, k])
            self.counts[rows] += 1

    def result(self) -> torch.Tensor:
        """Per-point values ``(n_points, n_channels)``; NaN where no window covered the point."""
        covered = self.counts > 0
        out = self.values / self.counts.clamp(min=1) if self.reduction == "mean" else self.values
        return torch.where(covered, out, torch.full_like(out, torch.nan))


def fold_window_errors(
    errors: torch.Tensor | np.ndarray, reduction: PointReduction = "mean"
) -> torch.Tensor:
    """Per-point values from the errors of every stride-1 window of one series.

    Parameters
    ----------
    errors : array of shape (n_windows, window) or (n_windows, window, n_channels)

    Returns
    -------
    Tensor of shape (n_windows + window - 1,) or (n_windows + window - 1, n_channels)
    """
    tensor = torch.as_tensor(errors, dtype=torch.float32)
    squeeze = tensor.dim() == 2
    if squeeze:
        tensor = tensor.unsqueeze(-1)
    n, window, channels = tensor.shape
    fold = PointFold(n + window - 1, window, channels, reduction, tensor.device)
    fold.add(tensor, 0)
    out = fold.result()
    return out.squeeze(-1) if squeeze else out
