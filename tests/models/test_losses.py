import math

import pytest
import torch

from anomaly.models import DenseAutoencoder, DenseConfig, Objective, elementwise_error
from anomaly.models.losses import kl_gaussian, kl_sparsity


def test_elementwise_errors_by_hand():
    x = torch.tensor([[0.0, 1.0]])
    x_hat = torch.tensor([[0.5, 0.0]])
    assert elementwise_error(x_hat, x, "mse").tolist() == [[0.25, 1.0]]
    assert elementwise_error(x_hat, x, "mae").tolist() == [[0.5, 1.0]]
    bce = elementwise_error(torch.tensor([[0.5, 0.9]]), torch.tensor([[1.0, 1.0]]), "bce")
    assert bce[0, 0].item() == pytest.approx(math.log(2), rel=1e-4)
    assert bce[0, 1].item() == pytest.approx(-math.log(0.9), rel=1e-4)
    # Perfect reconstruction of a mid-range value costs nothing (BCE minus the target's entropy).
    assert elementwise_error(
        torch.tensor([[0.3]]), torch.tensor([[0.3]]), "bce"
    ).item() == pytest.approx(0, abs=1e-5)
    assert elementwise_error(torch.tensor([[0.1]]), torch.tensor([[0.3]]), "bce").item() > 0.05


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="loss must be one of"):
        elementwise_error(torch.zeros(1, 1), torch.zeros(1, 1), "huber")


def test_gaussian_kl_is_zero_at_the_prior_and_positive_elsewhere():
    assert kl_gaussian(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per unit
    assert kl_gaussian(torch.ones(2, 3), torch.zeros(2, 3)).item() == pytest.approx(1.5)


def test_sparsity_kl_is_zero_at_target_and_grows_away_from_it():
    at_target = torch.full((10, 4), math.log(0.05 / 0.95))  # sigmoid(z) = 0.05
    assert kl_sparsity(at_target, 0.05).item() == pytest.approx(0, abs=1e-5)
    assert kl_sparsity(torch.zeros(10, 4), 0.05).item() > 0.5


def test_objective_adds_penalties():
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    plain = DenseAutoencoder(DenseConfig(6, (8,), 3)).eval()
    base = Objective()(plain, x, training=False)
    assert base.item() == pytest.approx(elementwise_error(plain(x).x_hat, x, "mse").mean().item())
    sparse = Objective(sparsity_weight=1.0)(plain, x, training=False)
    assert sparse.item() > base.item()
    vae = DenseAutoencoder(DenseConfig(6, (8,), 3, variational=True)).eval()
    with_kl = Objective(kl_weight=1.0)(vae, x, training=False)
    without_kl = Objective(kl_weight=0.0)(vae, x, training=False)
    assert with_kl.item() > without_kl.item()


def test_noise_only_in_training():
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    module = DenseAutoencoder(DenseConfig(6, (8,), 3)).eval()
    objective = Objective(noise="gaussian", noise_factor=1.0)
    assert (
        objective(module, x, training=False).item() == objective(module, x, training=False).item()
    )
    assert objective(module, x, training=True).item() != objective(module, x, training=False).item()


def test_ensemble_penalties_average_over_members():
    z = torch.randn(10, 4)
    assert kl_sparsity(torch.stack([z, z]), 0.05).item() == pytest.approx(
        kl_sparsity(z, 0.05).item(), rel=1e-6
    )
    mu, logvar = torch.randn(6, 3), torch.randn(6, 3)
    stacked = kl_gaussian(torch.stack([mu, mu]), torch.stack([logvar, logvar]))
    assert stacked.item() == pytest.approx(kl_gaussian(mu, logvar).item(), rel=1e-6)
