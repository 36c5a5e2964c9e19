"""Autoencoders for windows of a multivariate series: LSTM seq2seq, 1-D convolutional, dense.

Every module here takes and returns ``(n_windows, window, n_features)`` tensors.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from anomaly.models.dense import DenseAutoencoder, DenseConfig
from anomaly.models.outputs import Reconstruction


@dataclass(frozen=True)
class LSTMSeq2SeqConfig:
    """Shape and variant of an LSTM sequence-to-sequence autoencoder."""

    n_features: int
    hidden_size: int = 64
    num_layers: int = 2
    latent_dim: int = 32
    # Reading the window both ways gives the code the end of the window as clearly as its start;
    # a forward-only encoder's last state remembers the start poorly on long windows.
    bidirectional: bool = True
    dropout: float = 0.0
    variational: bool = False

    def __post_init__(self) -> None:
        if min(self.n_features, self.hidden_size, self.num_layers, self.latent_dim) < 1:
            raise ValueError(f"LSTM sizes must be positive, got {self}")


class LSTMSeq2SeqAutoencoder(nn.Module):
    """Bidirectional multi-layer LSTM encoder -> latent vector -> LSTM decoder -> linear output.

    The decoder's input at every step is the latent vector repeated over the window, in training
    and at scoring alike. Teacher forcing (feeding the true previous point to the decoder) was
    left out on purpose: a decoder that sees the true points can copy them, so it reconstructs
    anomalous points well and hides them, and training would differ from scoring (where nothing
    but the code may be used). With the repeated code, every reconstruction comes from the
    latent alone, which is the bottleneck anomaly scores rely on.

    With ``variational`` the code is split into mu and logvar heads; scoring decodes mu.
    Input and output shape: ``(n_windows, window, n_features)``; any window length works.
    """

    def __init__(self, config: LSTMSeq2SeqConfig):
        super().__init__()
        self.config = config
        inner_dropout = config.dropout if config.num_layers > 1 else 0.0
        self.encoder = nn.LSTM(
            config.n_features,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            bidirectional=config.bidirectional,
            dropout=inner_dropout,
        )
        directions = 2 if config.bidirectional else 1
        heads = 2 if config.variational else 1
        self.to_latent = nn.Linear(directions * config.hidden_size, heads * config.latent_dim)
        self.decoder = nn.LSTM(
            config.latent_dim,
            config.hidden_size,
            config.num_layers,
            batch_first=True,
            dropout=inner_dropout,
        )
        self.output = nn.Linear(config.hidden_size, config.n_features)

    def forward(self, x: torch.Tensor) -> Reconstruction:
        n, window, _ = x.shape
        _, (h, _) = self.encoder(x)
        directions = 2 if self.config.bidirectional else 1
        # The last layer's final state in each direction: (directions, n, hidden) -> (n, directions * hidden)
        last = h[-directions:].transpose(0, 1).reshape(n, -1)
        code = self.to_latent(last)
        mu, logvar = code.chunk(2, dim=-1) if self.config.variational else (code, None)
        z = (
            mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            if logvar is not None and self.training
            else mu
        )
        decoded, _ = self.decoder(z.unsqueeze(1).expand(n, window, z.shape[-1]))
        x_hat = self.output(decoded)
        return Reconstruction(x_hat, mu, mu if logvar is not None else None, logvar)


@dataclass(frozen=True)
class Conv1dConfig:
    """Shape of a 1-D convolutional autoencoder (strided encoder, transposed-conv decoder)."""

    n_features: int
    channels: tuple[int, ...] = (32, 16)
    # 7 time steps per kernel, as in the Conv-AE of the SKAB benchmark this family is built after.
    kernel_size: int = 7
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1 or self.n_features < 1:
            raise ValueError(f"channel counts must be positive, got {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")


class Conv1dAutoencoder(nn.Module):
    """Strided 1-D convolutions over time, mirrored by transposed convolutions.

    Each encoder layer halves the time axis. A window whose length is not a multiple of
    ``2 ** len(channels)`` is padded at its end by repeating its last point, and the
    reconstruction is cropped back to the window, so any window length works; the padded steps
    never reach a score. ``z`` is the flattened bottleneck feature map.
    Input and output shape: ``(n_windows, window, n_features)``.
    """

    def __init__(self, config: Conv1dConfig):
        super().__init__()
        self.config = config
        k, pad = config.kernel_size, config.kernel_size // 2
        encoder: list[nn.Module] = []
        widths = [config.n_features, *config.channels]
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            encoder += [nn.Conv1d(c_in, c_out, k, stride=2, padding=pad), nn.ReLU()]
            if config.dropout > 0 and i == 0:
                encoder.append(nn.Dropout(config.dropout))
        decoder: list[nn.Module] = []
        back = list(reversed(config.channels))
        for i, (c_in, c_out) in enumerate(zip(back, [*back[1:], back[-1]], strict=True)):
            decoder += [
                nn.ConvTranspose1d(c_in, c_out, k, stride=2, padding=pad, output_padding=1),
                nn.ReLU(),
            ]
            if config.dropout > 0 and i == 0:
                decoder.append(nn.Dropout(config.dropout))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.output = nn.Conv1d(back[-1], config.n_features, k, padding=pad)

    def forward(self, x: torch.Tensor) -> Reconstruction:
        window = x.shape[1]
        multiple = 2 ** len(self.config.channels)
        padded = math.ceil(window / multiple) * multiple
        h = x.transpose(1, 2)  # (n, features, time): Conv1d's layout
        if padded != window:
            h = F.pad(h, (0, padded - window), mode="replicate")
        code = self.encoder(h)
        x_hat = self.output(self.decoder(code))[:, :, :window].transpose(1, 2)
        return Reconstruction(x_hat, code.flatten(1))


class WindowedDense(nn.Module):
    """A dense autoencoder over flattened windows: ``(n, window, f)`` -> ``(n, window * f)`` and back."""

    def __init__(self, config: DenseConfig, window: int):
        super().__init__()
        if config.n_features % window:
            raise ValueError(f"n_features {config.n_features} is not window {window} x features")
        self.window = window
        self.dense = DenseAutoencoder(config)

    def forward(self, x: torch.Tensor) -> Reconstruction:
        out = self.dense(x.reshape(len(x), -1))
        return out._replace(x_hat=out.x_hat.reshape(x.shape))
