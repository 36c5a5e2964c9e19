import pytest
import torch

from anomaly.models import DenseAutoencoder, DenseConfig, default_dense_layout
from anomaly.models.noise import NOISE_KINDS, corrupt


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"variational": True},
        {"batch_norm": True, "dropout": 0.2},
        {"activation": "gelu", "output_activation": "sigmoid"},
        {"hidden_layers": ()},
    ],
    ids=["plain", "variational", "batchnorm-dropout", "gelu-sigmoid", "no-hidden"],
)
def test_output_shapes_for_every_variant(options):
    config = DenseConfig(
        **{"n_features": 11, "hidden_layers": (32, 16), "latent_dim": 4, **options}
    )
    module = DenseAutoencoder(config)
    x = torch.randn(7, 11)
    for training in (True, False):
        module.train(training)
        out = module(x)
        assert out.x_hat.shape == (7, 11)
        assert out.z.shape == (7, 4)
        if config.variational:
            assert out.mu.shape == out.logvar.shape == (7, 4)
        else:
            assert out.mu is None and out.logvar is None


def test_sigmoid_output_stays_in_unit_interval():
    module = DenseAutoencoder(DenseConfig(5, (8,), 2, output_activation="sigmoid")).eval()
    x_hat = module(torch.randn(50, 5) * 100).x_hat
    assert x_hat.min() >= 0 and x_hat.max() <= 1


def test_variational_eval_is_deterministic_and_training_samples():
    module = DenseAutoencoder(DenseConfig(6, (8,), 3, variational=True))
    x = torch.randn(4, 6)
    module.eval()
    assert torch.equal(module(x).x_hat, module(x).x_hat)
    module.train()
    assert not torch.equal(module(x).x_hat, module(x).x_hat)


@pytest.mark.parametrize(
    "width,hidden,latent",
    [(1, (64,), 1), (6, (64,), 5), (21, (64,), 20), (36, (128,), 32), (784, (512,), 32)],
)
def test_default_layout_from_input_width(width, hidden, latent):
    assert default_dense_layout(width) == (hidden, latent)


def test_default_code_is_narrower_than_the_input():
    # An over-complete code (the old rule gave 6 features an 8-wide code) can learn the identity.
    for width in range(2, 201):
        _, latent = default_dense_layout(width)
        assert 1 <= latent < width, width
    assert default_dense_layout(1)[1] == 1  # no narrower code than one unit exists


def test_default_detector_network_has_the_narrow_code(rng):
    from anomaly import AutoencoderDetector

    X = rng.normal(size=(300, 6))
    det = AutoencoderDetector(epochs=2, random_state=0, verbose=False, device="cpu").fit(X)
    assert det.module_config_["latent_dim"] == 5
    assert det.latent(X[:5]).shape == (5, 5)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="activation"):
        DenseConfig(4, (8,), 2, activation="swishy")
    with pytest.raises(ValueError, match="positive"):
        DenseConfig(4, (8,), 0)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_changes_a_copy_only(kind):
    torch.manual_seed(0)
    x = torch.randn(200, 10)
    before = x.clone()
    noisy = corrupt(x, kind, 0.3)
    assert torch.equal(x, before)
    assert noisy.shape == x.shape
    assert not torch.equal(noisy, x)


def test_masking_zeroes_about_the_requested_share():
    torch.manual_seed(0)
    noisy = corrupt(torch.ones(1000, 10), "masking", 0.25)
    assert abs((noisy == 0).float().mean().item() - 0.25) < 0.03


def test_salt_pepper_uses_feature_extremes():
    torch.manual_seed(0)
    x = torch.rand(500, 3)
    noisy = corrupt(x, "salt_pepper", 0.5)
    changed = noisy != x
    is_extreme = (noisy == x.amin(0)) | (noisy == x.amax(0))
    assert changed.any() and is_extreme[changed].all()


def test_share_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        corrupt(torch.zeros(3, 3), "masking", 1.5)


def test_ensemble_stacks_members_and_members_differ():
    from anomaly.models import AutoencoderEnsemble

    config = DenseConfig(5, (8,), 3, variational=True)
    ensemble = AutoencoderEnsemble([DenseAutoencoder(config) for _ in range(3)]).eval()
    out = ensemble(torch.randn(4, 5))
    assert out.x_hat.shape == (3, 4, 5) and out.z.shape == out.mu.shape == (3, 4, 3)
    assert not torch.equal(out.x_hat[0], out.x_hat[1])
    with pytest.raises(ValueError, match="at least 2 members"):
        AutoencoderEnsemble([DenseAutoencoder(config)])
