"""What every autoencoder's forward pass returns."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Reconstruction(NamedTuple):
    """Output of an autoencoder's forward pass.

    Attributes
    ----------
    x_hat : Tensor
        Reconstruction, same shape as the input.
    z : Tensor
        Latent code ``(n_samples, latent_dim)``; the mean for a variational model.
    mu, logvar : Tensor or None
        Posterior parameters of a variational model, else None.
    """

    x_hat: torch.Tensor
    z: torch.Tensor
    mu: torch.Tensor | None = None
    logvar: torch.Tensor | None = None
