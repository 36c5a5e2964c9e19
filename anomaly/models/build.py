"""Build every network family from the detector's parameters, and rebuild it from its saved config.

The one place that knows which ``nn.Module`` a ``model`` name means: fitting builds through
:func:`build_module`, loading a saved model rebuilds through :func:`module_from_config`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from torch import nn

from anomaly.models import (
    IMAGE_MODELS,
    AutoencoderEnsemble,
    ConvAutoencoder,
    ConvConfig,
    DenseAutoencoder,
    DenseConfig,
    default_dense_layout,
    default_sequence_latent,
    ensemble_of,
)
from anomaly.models.sequence import (
    Conv1dAutoencoder,
    Conv1dConfig,
    LSTMSeq2SeqAutoencoder,
    LSTMSeq2SeqConfig,
    WindowedDense,
)

MODELS: tuple[str, ...] = ("dense", "lstm_seq2seq", "conv1d", *IMAGE_MODELS)
# Families that only make sense on windows of a series.
SERIES_MODELS: tuple[str, ...] = ("lstm_seq2seq", "conv1d")

DEFAULT_CONV_CHANNELS = (32, 64)
DEFAULT_CONV_LATENT = 32


def build_image_module(params: dict[str, Any], image_shape: tuple[int, int, int]) -> dict[str, Any]:
    """JSON-able config of the image network for ``params`` and images ``(C, H, W)``."""
    channels, height, width = image_shape
    config = ConvConfig(
        image_size=(height, width),
        channels=channels,
        conv_channels=tuple(params["conv_channels"] or DEFAULT_CONV_CHANNELS),
        latent_dim=params["latent_dim"] or DEFAULT_CONV_LATENT,
        batch_norm=params["batch_norm"],
        variational=params["variational"],
        # Images are in [0, 1]; a sigmoid output keeps reconstructions there for every loss.
        output_activation="sigmoid",
    )
    return {**asdict(config), "n_members": params["n_estimators"]}


def image_module_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild the image network (or an ensemble of them) from :func:`build_image_module`'s config."""
    options = {k: v for k, v in config.items() if k != "n_members"}
    conv = ConvConfig(
        **{
            **options,
            "image_size": tuple(options["image_size"]),
            "conv_channels": tuple(options["conv_channels"]),
        }
    )
    n_members = config.get("n_members", 1)
    if n_members == 1:
        return ConvAutoencoder(conv)
    return AutoencoderEnsemble([ConvAutoencoder(conv) for _ in range(n_members)])


def build_module(
    model: str, n_features: int, params: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the network for ``model`` and return it with the JSON-able config that rebuilds it.

    ``n_features`` is the encoded width of a row; for windows (``params["window"]`` set) it is
    the number of series features, and the network takes ``(n, window, n_features)``. For image
    models ``params["channels"]`` and ``params["image_size"]`` give the shape.
    """
    if model in IMAGE_MODELS:
        shape = (params["channels"], *params["image_size"])
        image_config = build_image_module(params, shape)
        return image_module_from_config(image_config), image_config
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    window = params.get("window")
    options: dict[str, Any]
    if model == "lstm_seq2seq":
        sizes = tuple(params["hidden_layers"] or (64, 64))
        if len(set(sizes)) != 1:
            raise ValueError(
                f"lstm_seq2seq stacks LSTM layers of one width: hidden_layers must repeat one size, got {sizes}"
            )
        options = asdict(
            LSTMSeq2SeqConfig(
                n_features=n_features,
                hidden_size=sizes[0],
                num_layers=len(sizes),
                latent_dim=params["latent_dim"] or default_sequence_latent(n_features),
                dropout=params["dropout"],
                variational=params["variational"],
            )
        )
    elif model == "conv1d":
        if params["latent_dim"] is not None or params["variational"]:
            raise ValueError(
                "conv1d's code is its last feature map: set hidden_layers (channels), not "
                "latent_dim; it has no variational variant"
            )
        options = asdict(
            Conv1dConfig(
                n_features=n_features,
                channels=tuple(params["hidden_layers"] or (32, 16)),
                kernel_size=params["kernel_size"],
                dropout=params["dropout"],
            )
        )
    else:
        width = n_features * (window or 1)
        default_hidden, default_latent = default_dense_layout(width)
        options = asdict(
            DenseConfig(
                n_features=width,
                hidden_layers=tuple(params["hidden_layers"] or default_hidden),
                latent_dim=params["latent_dim"] or default_latent,
                activation=params["activation"],
                dropout=params["dropout"],
                batch_norm=params["batch_norm"],
                variational=params["variational"],
                output_activation="sigmoid" if params["loss"] == "bce" else None,
            )
        )
    module_config = {**options, "n_members": params["n_estimators"], "window": window}
    return module_from_config(model, module_config), module_config


def module_from_config(model: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a network from the config :func:`build_module` returned."""
    if model in IMAGE_MODELS:
        return image_module_from_config(config)
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    options = {k: v for k, v in config.items() if k not in ("n_members", "window")}
    window = config.get("window")

    def one() -> nn.Module:
        if model == "lstm_seq2seq":
            return LSTMSeq2SeqAutoencoder(LSTMSeq2SeqConfig(**options))
        if model == "conv1d":
            return Conv1dAutoencoder(
                Conv1dConfig(**{**options, "channels": tuple(options["channels"])})
            )
        dense = DenseConfig(**{**options, "hidden_layers": tuple(options["hidden_layers"])})
        return WindowedDense(dense, window) if window else DenseAutoencoder(dense)

    n_members = config.get("n_members", 1)
    if n_members == 1:
        return one()
    return ensemble_of([one() for _ in range(n_members)])
