"""Reconstruction errors and training objectives (reconstruction + sparsity or KL terms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomaly.models.noise import NoiseName, corrupt
from anomaly.models.ssim import ssim_map

LossName = Literal["mse", "mae", "bce", "ssim"]
LOSSES: tuple[str, ...] = ("mse", "mae", "bce", "ssim")
# Losses that need image batches (n, C, H, W).
IMAGE_LOSSES: tuple[str, ...] = ("ssim",)


def elementwise_error(
    x_hat: torch.Tensor, x: torch.Tensor, loss: LossName, ssim_weight: float = 1.0
) -> torch.Tensor:
    """Per-element reconstruction error, same shape as ``x``; computed in float32.

    ``bce`` expects ``x`` and ``x_hat`` in [0, 1] (min-max scaled data, sigmoid output). It is
    returned minus the entropy of ``x`` (i.e. the Bernoulli KL divergence), so a perfect
    reconstruction scores 0 whatever the value: plain BCE is large for mid-range values and would
    rank rows by how grey they are rather than by how badly they are reconstructed. The
    gradient is that of BCE.

    ``ssim`` expects image batches ``(n, C, H, W)`` in [0, 1]: the per-pixel error is
    ``ssim_weight * (1 - SSIM) / 2 + (1 - ssim_weight) * squared error``, so ``ssim_weight=1``
    is pure SSIM and smaller weights mix in MSE (SSIM alone ignores flat-region brightness
    shifts; squared error alone ignores structure).
    """
    # Errors are float32 even under autocast: BCE is unsafe to autocast (torch refuses it on
    # CUDA), and bf16 errors would quantise the scores the threshold is compared with.
    with torch.autocast(device_type=x.device.type, enabled=False):
        if loss == "ssim":
            return _ssim_error(x_hat.float(), x.float(), ssim_weight)
        return _elementwise_error(x_hat.float(), x.float(), loss)


def _ssim_error(x_hat: torch.Tensor, x: torch.Tensor, weight: float) -> torch.Tensor:
    if x_hat.dim() == x.dim() + 1:  # an ensemble's (n_members, n, C, H, W) against (n, C, H, W)
        members = len(x_hat)
        flat = _ssim_error(x_hat.flatten(0, 1), x.repeat(members, 1, 1, 1), weight)
        return flat.view_as(x_hat)
    error = (1 - ssim_map(x_hat, x)) / 2
    if weight < 1:
        error = weight * error + (1 - weight) * (x_hat - x).square()
    return error


def _elementwise_error(x_hat: torch.Tensor, x: torch.Tensor, loss: LossName) -> torch.Tensor:
    if loss == "mse":
        return (x_hat - x).square()
    if loss == "mae":
        return (x_hat - x).abs()
    if loss == "bce":
        # Clamped so a value slightly outside [0, 1] at scoring time stays finite.
        # Expanded: an ensemble's (n_members, n, ...) output against (n, ...) targets, which
        # binary_cross_entropy does not broadcast.
        target = x.clamp(0.0, 1.0).expand_as(x_hat)
        bce = F.binary_cross_entropy(x_hat.clamp(1e-6, 1 - 1e-6), target, reduction="none")
        return bce - F.binary_cross_entropy(target.clamp(1e-6, 1 - 1e-6), target, reduction="none")
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def kl_sparsity(z: torch.Tensor, target: float) -> torch.Tensor:
    """KL(target || mean activation) summed over latent units, activations squashed by a sigmoid.

    ``z`` is ``(n_samples, latent_dim)``, or ``(n_members, n_samples, latent_dim)`` for an
    ensemble, whose members' penalties are averaged.
    """
    rho_hat = torch.sigmoid(z.float()).mean(dim=-2).clamp(1e-6, 1 - 1e-6)
    rho = torch.tensor(target, device=z.device)
    kl = rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))
    return kl.sum(dim=-1).mean()


def kl_gaussian(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)), summed over latent units and averaged over the batch (and members)."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=-1)).mean()


@dataclass(frozen=True)
class Objective:
    """The training loss of an autoencoder family and its variants.

    Parameters
    ----------
    loss : {"mse", "mae", "bce", "ssim"}
        Reconstruction error, averaged over elements (``ssim``: images only).
    noise : str or None
        Corruption applied to inputs in training only (denoising autoencoder).
    noise_factor : float
        Scale or share of the corruption, see :func:`anomaly.models.noise.corrupt`.
    sparsity_weight : float
        Weight beta of the KL sparsity penalty on the latent; 0 turns it off.
    sparsity_target : float
        Target mean activation rho of latent units.
    kl_weight : float
        Weight beta of the KL term of a variational model (beta-VAE); used only when the model
        returns mu and logvar.
    """

    loss: LossName = "mse"
    noise: NoiseName | None = None
    noise_factor: float = 0.1
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.05
    kl_weight: float = 1.0
    # Share of the SSIM term in the "ssim" loss; the rest is squared error.
    ssim_weight: float = 1.0

    def __call__(self, module: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Scalar loss of ``module`` on batch ``x``; noise only when ``training``."""
        x_in = corrupt(x, self.noise, self.noise_factor) if (training and self.noise) else x
        out = module(x_in)
        total = elementwise_error(out.x_hat, x, self.loss, self.ssim_weight).mean()
        if self.sparsity_weight > 0:
            total = total + self.sparsity_weight * kl_sparsity(out.z, self.sparsity_target)
        if out.mu is not None and out.logvar is not None:
            # Per-element reconstruction vs a per-sample KL: scale the KL by the element count so
            # kl_weight=1 is the usual ELBO balance whatever the input width.
            total = total + self.kl_weight * kl_gaussian(out.mu, out.logvar) / x[0].numel()
        return total
