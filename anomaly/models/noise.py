"""Input corruption for denoising autoencoders (training only)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

NoiseName = Literal["gaussian", "salt_pepper", "masking", "dropout"]
NOISE_KINDS: tuple[str, ...] = ("gaussian", "salt_pepper", "masking", "dropout")


def corrupt(x: torch.Tensor, kind: NoiseName, factor: float) -> torch.Tensor:
    """Return a corrupted copy of ``x``; ``x`` itself is left alone.

    Parameters
    ----------
    kind : {"gaussian", "salt_pepper", "masking", "dropout"}
        ``gaussian`` adds ``factor * N(0, 1)``; ``salt_pepper`` sets a share ``factor`` of values
        to the batch minimum or maximum of their feature; ``masking`` zeroes a share ``factor``
        (zero is the feature mean after standard scaling); ``dropout`` zeroes a share ``factor``
        and rescales the rest by ``1 / (1 - factor)``.
    factor : float
        Noise scale (gaussian) or share of corrupted values (the others), in [0, 1).
    """
    if kind == "gaussian":
        return x + factor * torch.randn_like(x)
    if not 0.0 <= factor < 1.0:
        raise ValueError(
            f"noise_factor for {kind} noise is a share of values in [0, 1), got {factor}"
        )
    if kind == "dropout":
        return F.dropout(x, p=factor, training=True)
    hit = torch.rand_like(x) < factor
    if kind == "masking":
        return x.masked_fill(hit, 0.0)
    if kind == "salt_pepper":
        low = x.amin(dim=0, keepdim=True).expand_as(x)
        high = x.amax(dim=0, keepdim=True).expand_as(x)
        salt = torch.rand_like(x) < 0.5
        return torch.where(hit, torch.where(salt, high, low), x)
    raise ValueError(f"noise must be one of {NOISE_KINDS}, got {kind!r}")
