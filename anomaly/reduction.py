"""From element errors (per feature, per pixel) to one score per input row: the same for every kind.

One input row is a table row, a time step of a series (its features) or an image (its pixels).
``mean`` suits broad deviations; ``max`` reacts to a single broken element; ``topk`` is the mean
of the largest ``topk_fraction`` of the row's element errors (at least one), which catches a small
defect that a mean over all elements dilutes, with less noise than ``max``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Reduction = Literal["mean", "max", "topk"]

REDUCTIONS: tuple[str, ...] = ("mean", "max", "topk")


def topk_count(n_elements: int, topk_fraction: float) -> int:
    """How many of ``n_elements`` errors ``topk`` averages: ``round(n * fraction)``, at least 1."""
    if not 0 < topk_fraction <= 1:
        raise ValueError(f"topk_fraction must be in (0, 1], got {topk_fraction}")
    return max(1, round(n_elements * topk_fraction))


def reduce_errors(
    errors: torch.Tensor, reduction: Reduction = "mean", topk_fraction: float = 0.05
) -> torch.Tensor:
    """Reduce element errors ``(n_rows, ...)`` to one score per row ``(n_rows,)``."""
    flat = errors.reshape(len(errors), -1)
    if reduction == "mean":
        return flat.mean(dim=1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "topk":
        k = topk_count(flat.shape[1], topk_fraction)
        return flat.topk(k, dim=1).values.mean(dim=1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_last(
    errors: torch.Tensor, reduction: Reduction = "mean", topk_fraction: float = 0.05
) -> torch.Tensor:
    """:func:`reduce_errors` over the last dimension only: ``(..., n_elements)`` -> ``(...)``.

    For series, whose rows (time steps) sit inside windows ``(n_windows, window, n_features)``.
    """
    if reduction == "mean":
        return errors.mean(dim=-1)
    if reduction == "max":
        return errors.amax(dim=-1)
    if reduction == "topk":
        k = topk_count(errors.shape[-1], topk_fraction)
        return errors.topk(k, dim=-1).values.mean(dim=-1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def source_matrix(sources: np.ndarray, n_sources: int) -> torch.Tensor:
    """``(n_encoded, n_sources)`` 0/1 matrix with a 1 where encoded column ``j`` came from input ``sources[j]``.

    ``errors @ source_matrix(...)`` sums encoded-column errors back onto input columns
    (one-hot columns share one), as one matrix product on the device.
    """
    matrix = torch.zeros(len(sources), n_sources, dtype=torch.float32)
    matrix[torch.arange(len(sources)), torch.as_tensor(sources, dtype=torch.long)] = 1.0
    return matrix
