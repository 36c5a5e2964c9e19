"""The batched dense ensemble computes what the sequential one does, and saves in its layout."""

from __future__ import annotations

import pytest
import torch

from anomaly.models import AutoencoderEnsemble, BatchedDenseEnsemble, DenseAutoencoder, DenseConfig
from anomaly.models.ensemble import ensemble_of
from anomaly.models.sequence import WindowedDense

VARIANTS = {
    "plain": {},
    "deep": {"hidden_layers": (12, 8)},
    "batch_norm_dropout": {"batch_norm": True, "dropout": 0.2},
    "variational": {"variational": True},
    "sigmoid": {"output_activation": "sigmoid", "activation": "tanh"},
    "no_hidden": {"hidden_layers": ()},
}


def _members(n: int, window: int | None = None, **options: object) -> list[torch.nn.Module]:
    config = DenseConfig(
        **{"n_features": 6 * (window or 1), "hidden_layers": (10,), "latent_dim": 3, **options}  # type: ignore[arg-type]
    )
    return [WindowedDense(config, window) if window else DenseAutoencoder(config) for _ in range(n)]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_batched_outputs_equal_the_sequential_ensemble(variant: str) -> None:
    torch.manual_seed(0)
    members = _members(3, **VARIANTS[variant])
    sequential = AutoencoderEnsemble(members).eval()
    batched = BatchedDenseEnsemble.from_members(members).eval()
    x = torch.randn(17, 6)
    want, got = sequential(x), batched(x)
    assert got.x_hat.shape == want.x_hat.shape == (3, 17, 6)
    torch.testing.assert_close(got.x_hat, want.x_hat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.z, want.z, rtol=1e-5, atol=1e-6)
    assert (got.mu is None) == (want.mu is None)


def test_windowed_members_are_batched_too() -> None:
    torch.manual_seed(1)
    members = _members(2, window=4)
    batched = ensemble_of(members)
    assert isinstance(batched, BatchedDenseEnsemble)
    x = torch.randn(5, 4, 6)
    torch.testing.assert_close(
        batched.eval()(x).x_hat, AutoencoderEnsemble(members).eval()(x).x_hat
    )
    assert set(batched.state_dict()) == set(AutoencoderEnsemble(members).state_dict())


def test_state_dict_keeps_the_sequential_layout_both_ways() -> None:
    torch.manual_seed(2)
    members = _members(3, batch_norm=True)
    sequential = AutoencoderEnsemble(members)
    sequential.train()(torch.randn(32, 6))  # move the batch-norm statistics off their defaults
    batched = BatchedDenseEnsemble.from_members(list(sequential.members))
    saved = batched.state_dict()
    want = sequential.state_dict()
    assert set(saved) == set(want)
    for key, value in want.items():
        assert torch.equal(saved[key], value), key
        assert saved[key].data_ptr() != value.data_ptr()
    # And back: a fresh sequential ensemble loads what the batched one saved.
    torch.manual_seed(3)
    again = AutoencoderEnsemble(_members(3, batch_norm=True))
    again.load_state_dict(saved)
    x = torch.randn(9, 6)
    torch.testing.assert_close(again.eval()(x).x_hat, batched.eval()(x).x_hat)


def test_one_training_step_moves_each_member_as_the_sequential_one() -> None:
    torch.manual_seed(4)
    members = _members(3, batch_norm=True)
    sequential = AutoencoderEnsemble(members).train()
    batched = BatchedDenseEnsemble.from_members(members).train()
    x = torch.randn(64, 6)
    before = {k: v.clone() for k, v in sequential.state_dict().items()}
    for module in (sequential, batched):
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        loss = ((module(x).x_hat - x) ** 2).mean()
        loss.backward()
        optimizer.step()
    after_seq, after_batched = sequential.state_dict(), batched.state_dict()
    for key, value in after_seq.items():
        torch.testing.assert_close(after_batched[key], value, rtol=1e-5, atol=1e-6, msg=key)
    # The step changed the weights (so the comparison above compared something).
    assert not torch.equal(after_seq["members.2.output.weight"], before["members.2.output.weight"])


def test_other_families_stay_sequential() -> None:
    from anomaly.models import ConvAutoencoder, ConvConfig

    members = [ConvAutoencoder(ConvConfig(image_size=(8, 8))) for _ in range(2)]
    assert isinstance(ensemble_of(members), AutoencoderEnsemble)


def test_members_are_standalone_copies_that_reconstruct_as_the_ensemble() -> None:
    torch.manual_seed(5)
    batched = BatchedDenseEnsemble.from_members(_members(3, variational=True)).eval()
    x = torch.randn(8, 6)
    stacked = batched(x).x_hat
    members = batched.members
    assert len(members) == 3 and all(isinstance(m, DenseAutoencoder) for m in members)
    for i, member in enumerate(members):
        torch.testing.assert_close(member.eval()(x).x_hat, stacked[i])
    with torch.no_grad():
        members[0].output.weight.zero_()
    torch.testing.assert_close(batched(x).x_hat, stacked)  # the ensemble is unchanged
