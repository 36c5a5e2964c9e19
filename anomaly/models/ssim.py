"""Structural similarity (SSIM) with torch ops: separable depthwise Gaussian filtering of local statistics."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5 and these stabilisers for data in [0, 1].
WINDOW_SIZE = 11
SIGMA = 1.5
C1 = 0.01**2
C2 = 0.03**2


def _gaussian(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Depthwise Gaussian filter as two 1-D passes (2k instead of k^2 taps per pixel)."""
    channels, size = x.shape[1], len(g)
    x = F.conv2d(x, g.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
    return F.conv2d(x, g.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window_size: int = WINDOW_SIZE, sigma: float = SIGMA
) -> torch.Tensor:
    """Local SSIM of two image batches ``(n, C, H, W)`` with values in [0, 1], same shape out.

    1 where the images agree in local mean, contrast and structure; lower (down to -1) where
    they differ. The window is shrunk to the image for images smaller than it, and borders are
    reflect-padded so the map keeps the input size (every pixel gets a value to rank).
    """
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(
            f"ssim needs two image batches of one shape (n, C, H, W), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, y = x.float(), y.float()
        size = min(window_size, x.shape[-1], x.shape[-2])
        size -= 1 - size % 2  # odd, so the map stays centred
        pad = size // 2
        # The five local statistics in one pass over a stacked batch.
        stacked = torch.cat([x, y, x * x, y * y, x * y])
        if pad:
            stacked = F.pad(stacked, (pad, pad, pad, pad), mode="reflect")
        mu_x, mu_y, xx, yy, xy = _blur(stacked, _gaussian(size, sigma, x.device)).chunk(5)
        var_x = xx - mu_x**2
        var_y = yy - mu_y**2
        cov = xy - mu_x * mu_y
        return ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / (
            (mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2)
        )


def ssim(x: torch.Tensor, y: torch.Tensor, **kwargs: float) -> torch.Tensor:
    """Mean SSIM per image ``(n,)``; 1 for identical images."""
    return ssim_map(x, y, **kwargs).flatten(1).mean(dim=1)  # type: ignore[arg-type]
