"""Dense ensembles as one batched module: every member's layer in one grouped matmul.

:class:`~anomaly.models.dense.AutoencoderEnsemble` runs its members one after another, so an
ensemble of five costs five networks' worth of small kernel launches per step; on a CPU those
launches, not the arithmetic, bound a 32-64-16 network. :class:`BatchedDenseEnsemble` stacks the
members' weights, ``(n_members, out, in)`` per layer, and runs each layer of all members as one
``baddbmm``, with the same outputs (stacked on a leading member axis) as the sequential ensemble.

Saved weights keep the sequential ensemble's keys (``members.<i>.<layer>``): a state-dict hook
splits the stacked tensors on save and a load hook stacks them again, so models saved before and
after this module existed load into either.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from anomaly.models.dense import (
    _ACTIVATIONS,
    AutoencoderEnsemble,
    DenseAutoencoder,
    DenseConfig,
)
from anomaly.models.outputs import Reconstruction
from anomaly.models.sequence import WindowedDense


class GroupedLinear(nn.Module):
    """``n_members`` independent ``nn.Linear(width_in, width_out)`` applied in one batched matmul.

    Input ``(n, width_in)`` (shared by all members) or ``(n_members, n, width_in)``; output
    ``(n_members, n, width_out)``. ``weight`` is ``(n_members, width_out, width_in)``: member
    ``i``'s slice is laid out exactly as its ``nn.Linear.weight``.
    """

    def __init__(self, n_members: int, width_in: int, width_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_members, width_out, width_in))
        self.bias = nn.Parameter(torch.empty(n_members, width_out))
        # nn.Linear's own initialisation, member by member (each member's fan-in is width_in).
        bound = 1 / math.sqrt(width_in)
        with torch.no_grad():
            for w in self.weight:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            self.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(len(self.weight), *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class GroupedBatchNorm(nn.BatchNorm1d):
    """Batch norm of each member's features with its own statistics: ``(n_members, n, C)``.

    One ``BatchNorm1d(n_members * C)`` over the members' features side by side, which keeps
    per-member statistics because batch norm normalises each channel on its own.
    """

    def __init__(self, n_members: int, width: int):
        super().__init__(n_members * width)
        self.n_members = n_members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e, n, c = x.shape
        flat = x.transpose(0, 1).reshape(n, e * c)
        return super().forward(flat).reshape(n, e, c).transpose(0, 1)


def _grouped_mlp(sizes: list[int], config: DenseConfig, n_members: int) -> nn.Sequential:
    # The same layer positions as dense._mlp, so state-dict keys map one to one.
    layers: list[nn.Module] = []
    for width_in, width_out in itertools.pairwise(sizes):
        layers.append(GroupedLinear(n_members, width_in, width_out))
        if config.batch_norm:
            layers.append(GroupedBatchNorm(n_members, width_out))
        layers.append(_ACTIVATIONS[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
    return nn.Sequential(*layers)


class BatchedDenseEnsemble(nn.Module):
    """``n_members`` dense autoencoders of one config, computed together.

    Outputs as :class:`~anomaly.models.dense.AutoencoderEnsemble`'s: ``x_hat``
    ``(n_members, *x.shape)``, ``z`` (and ``mu``, ``logvar``) ``(n_members, n, latent_dim)``.
    With ``window``, members are :class:`~anomaly.models.sequence.WindowedDense`: input
    ``(n, window, f)`` is flattened to ``(n, window * f)`` and reconstructions reshaped back.

    Build it with :meth:`from_members` to start from the members' own initial weights.
    """

    def __init__(self, config: DenseConfig, n_members: int, window: int | None = None):
        super().__init__()
        if n_members < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {n_members}")
        self.config, self.n_members, self.window = config, n_members, window
        widths = [config.n_features, *config.hidden_layers]
        self.encoder = _grouped_mlp(widths, config, n_members)
        self.to_latent = GroupedLinear(n_members, widths[-1], config.latent_dim)
        self.to_logvar = (
            GroupedLinear(n_members, widths[-1], config.latent_dim) if config.variational else None
        )
        self.decoder = _grouped_mlp(
            [config.latent_dim, *reversed(config.hidden_layers)], config, n_members
        )
        self.output = GroupedLinear(
            n_members,
            config.hidden_layers[0] if config.hidden_layers else config.latent_dim,
            config.n_features,
        )
        # Saved keys are the sequential ensemble's: members.<i>.[dense.]<layer>.
        self._member_prefix = "dense." if window else ""
        self.register_state_dict_post_hook(_split_members)
        self.register_load_state_dict_pre_hook(_stack_members)

    @classmethod
    def from_members(cls, members: list[nn.Module]) -> BatchedDenseEnsemble:
        """The batched equivalent of ``AutoencoderEnsemble(members)``, with their weights."""
        first = members[0]
        if isinstance(first, WindowedDense):
            window, config = first.window, first.dense.config
        elif isinstance(first, DenseAutoencoder):
            window, config = None, first.config
        else:
            raise TypeError(f"members must be dense autoencoders, got {type(first).__name__}")
        # The members' weights replace the batched module's own initial ones; drawing those
        # must not move the random stream, so training shuffles as it would without batching.
        with torch.random.fork_rng(devices=[]):
            batched = cls(config, len(members), window)
        state: dict[str, Any] = {}
        for i, member in enumerate(members):
            for key, value in member.state_dict().items():
                state[f"members.{i}.{key}"] = value
        batched.load_state_dict(state)
        return batched

    @property
    def members(self) -> list[nn.Module]:
        """Each member as a standalone module, with a copy of its current weights.

        For inspection (a member's own reconstruction or code); changing these copies does not
        change the ensemble.
        """
        state = self.state_dict()
        device = self.output.weight.device
        out: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):  # building them must not move the random stream
            for i in range(self.n_members):
                member: nn.Module = (
                    WindowedDense(self.config, self.window)
                    if self.window
                    else DenseAutoencoder(self.config)
                )
                head = f"members.{i}."
                member.load_state_dict(
                    {k[len(head) :]: v for k, v in state.items() if k.startswith(head)}
                )
                out.append(member.to(device).train(self.training))
        return out

    def forward(self, x: torch.Tensor) -> Reconstruction:
        flat = x.reshape(len(x), -1) if self.window else x
        h = self.encoder(flat)
        mu = self.to_latent(h)
        logvar = self.to_logvar(h) if self.to_logvar is not None else None
        if logvar is None:
            z = mu
        else:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        out = self.output(self.decoder(z))
        if self.config.output_activation == "sigmoid":
            out = torch.sigmoid(out)
        if self.window:
            out = out.reshape(self.n_members, *x.shape)
        if logvar is None:
            return Reconstruction(out, mu)
        return Reconstruction(out, mu, mu, logvar)


def _member_shape(module: BatchedDenseEnsemble, name: str, stacked: torch.Tensor) -> list[int]:
    if stacked.dim() == 0:
        return []
    owner = module.get_submodule(name.rsplit(".", 1)[0])
    if isinstance(owner, GroupedBatchNorm):
        return [stacked.shape[0] // module.n_members]
    return list(stacked.shape[1:])


def _split_members(
    module: BatchedDenseEnsemble, state: dict[str, Any], prefix: str, _meta: Any
) -> None:
    """State-dict hook: stacked ``<layer>`` tensors -> ``members.<i>.[dense.]<layer>`` copies."""
    for key in [k for k in state if k.startswith(prefix)]:
        name = key[len(prefix) :]
        stacked = state.pop(key)
        shape = _member_shape(module, name, stacked)
        for i in range(module.n_members):
            # Copies, not views: safetensors refuses tensors that share memory.
            part = stacked.clone() if not shape else stacked.reshape(module.n_members, *shape)[i]
            state[f"{prefix}members.{i}.{module._member_prefix}{name}"] = part.clone()


def _stack_members(
    module: BatchedDenseEnsemble,
    state: dict[str, Any],
    prefix: str,
    _meta: Any,
    _strict: bool,
    _missing: list[str],
    _unexpected: list[str],
    _errors: list[str],
) -> None:
    """Load hook: ``members.<i>.[dense.]<layer>`` tensors (the saved layout) -> stacked ``<layer>``."""
    head = f"{prefix}members."
    if not any(k.startswith(head) for k in state):
        return  # already stacked
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
    for name in names:
        keys = [f"{head}{i}.{module._member_prefix}{name}" for i in range(module.n_members)]
        if not all(k in state for k in keys):
            continue  # left for load_state_dict to report as missing
        parts = [state.pop(k) for k in keys]
        if parts[0].dim() == 0:  # num_batches_tracked: one counter for all members
            state[prefix + name] = parts[0]
        else:
            stacked = torch.stack(parts)
            owner = module.get_submodule(name.rsplit(".", 1)[0])
            state[prefix + name] = (
                stacked.reshape(-1) if isinstance(owner, GroupedBatchNorm) else stacked
            )


def ensemble_of(members: list[nn.Module]) -> nn.Module:
    """One module for ``members``: batched when they are all dense autoencoders, else sequential."""
    dense = all(type(m) is DenseAutoencoder for m in members) or all(
        type(m) is WindowedDense for m in members
    )
    if dense and len(members) > 1:
        return BatchedDenseEnsemble.from_members(members)
    return AutoencoderEnsemble(members)
