"""Reconstruction errors and training objectives (reconstruction + sparsity or KL terms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from anomaly.models.noise import NoiseName, corrupt

LossName = Literal["mse", "mae", "bce"]
LOSSES: tuple[str, ...] = ("mse", "mae", "bce")


def elementwise_error(x_hat: torch.Tensor, x: torch.Tensor, loss: LossName) -> torch.Tensor:
    """Per-element reconstruction error, same shape as ``x``; computed in float32.

    ``bce`` expects ``x`` and ``x_hat`` in [0, 1] (min-max scaled data, sigmoid output). It is
    returned minus the entropy of ``x`` (i.e. the Bernoulli KL divergence), so a perfect
    reconstruction scores 0 whatever the value: plain BCE is large for mid-range values and would
    rank rows by how grey they are rather than by how badly they are reconstructed. The
    gradient is that of BCE.
    """
    # Errors are float32 even under autocast: BCE is unsafe to autocast (torch refuses it on
    # CUDA), and bf16 errors would quantise the scores the threshold is compared with.
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _elementwise_error(x_hat.float(), x.float(), loss)


def _elementwise_error(x_hat: torch.Tensor, x: torch.Tensor, loss: LossName) -> torch.Tensor:
    if loss == "mse":
        return (x_hat - x).square()
    if loss == "mae":
        return (x_hat - x).abs()
    if loss == "bce":
        # Clamped so a value slightly outside [0, 1] at scoring time stays finite.
        target = x.clamp(0.0, 1.0)
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
    loss : {"mse", "mae", "bce"}
        Reconstruction error, averaged over elements.
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

    def __call__(self, module: nn.Module, x: torch.Tensor, training: bool) -> torch.Tensor:
        """Scalar loss of ``module`` on batch ``x``; noise only when ``training``."""
        x_in = corrupt(x, self.noise, self.noise_factor) if (training and self.noise) else x
        out = module(x_in)
        total = elementwise_error(out.x_hat, x, self.loss).mean()
        if self.sparsity_weight > 0:
            total = total + self.sparsity_weight * kl_sparsity(out.z, self.sparsity_target)
        if out.mu is not None and out.logvar is not None:
            # Per-element reconstruction vs a per-sample KL: scale the KL by the element count so
            # kl_weight=1 is the usual ELBO balance whatever the input width.
            total = total + self.kl_weight * kl_gaussian(out.mu, out.logvar) / x[0].numel()
        return total
