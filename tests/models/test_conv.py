"""Convolutional autoencoders, SSIM and the top-k reduction."""

import pytest
import torch

from anomaly.detectors import build_module
from anomaly.models import ConvAutoencoder, ConvConfig, ssim, ssim_map
from anomaly.models.losses import Objective, elementwise_error
from anomaly.scoring import reduce_errors


@pytest.mark.parametrize(
    ("size", "channels", "conv_channels"),
    [((28, 28), 1, (16, 32)), ((30, 17), 3, (8, 16, 32)), ((5, 9), 1, (4, 8)), ((1, 1), 3, (4,))],
)
@pytest.mark.parametrize("variational", [False, True])
def test_reconstruction_has_the_input_shape_for_any_size(
    size, channels, conv_channels, variational
):
    config = ConvConfig(
        image_size=size,
        channels=channels,
        conv_channels=conv_channels,
        latent_dim=6,
        variational=variational,
    )
    module = ConvAutoencoder(config)
    x = torch.rand(3, channels, *size)
    out = module(x)
    assert out.x_hat.shape == x.shape
    assert out.z.shape == (3, 6)
    assert (out.mu is not None) is variational
    assert 0 <= out.x_hat.min() and out.x_hat.max() <= 1  # sigmoid output for [0, 1] images
    # Sides that are not multiples of the total stride are padded, then cropped back.
    stride = 2 ** len(conv_channels)
    assert all(p % stride == 0 and p >= s for p, s in zip(config.padded_size, size, strict=True))


def test_batch_norm_and_ensemble_via_build_module():
    params = {
        "image_size": (12, 10),
        "channels": 3,
        "conv_channels": [4, 8],
        "latent_dim": 5,
        "batch_norm": True,
        "variational": False,
        "n_estimators": 3,
    }
    module, config = build_module("conv", 3 * 12 * 10, params)
    out = module(torch.rand(4, 3, 12, 10))
    assert out.x_hat.shape == (3, 4, 3, 12, 10)  # members stacked first
    assert config["n_members"] == 3 and config["image_size"] == (12, 10)
    errors = elementwise_error(out.x_hat, torch.rand(4, 3, 12, 10), "ssim", 0.5)
    assert errors.shape == (3, 4, 3, 12, 10)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="image_size"):
        ConvConfig(image_size=(0, 4))
    with pytest.raises(ValueError, match="conv layer"):
        ConvConfig(image_size=(8, 8), conv_channels=())


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 24, generator=gen)
    torch.testing.assert_close(ssim(x, x), torch.ones(4))
    previous = torch.ones(4)
    for sigma in (0.05, 0.1, 0.2, 0.4):
        noisy = (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)
        value = ssim(x, noisy)
        assert (value < previous).all()
        previous = value
    assert ssim_map(x, x).shape == x.shape


def test_ssim_works_on_images_smaller_than_the_window():
    x = torch.rand(2, 1, 4, 5)
    torch.testing.assert_close(ssim(x, x), torch.ones(2))
    assert (ssim(x, 1 - x) < 0.9).all()


def test_ssim_loss_mixes_with_squared_error_and_trains():
    x = torch.rand(2, 1, 16, 16)
    y = x.clone()
    y[:, :, :4, :4] = 1 - y[:, :, :4, :4]
    pure, half, mse = (elementwise_error(y, x, "ssim", w) for w in (1.0, 0.5, 0.0))
    torch.testing.assert_close(mse, (y - x).square())
    torch.testing.assert_close(half, 0.5 * pure + 0.5 * mse)
    assert pure[..., 8:, 8:].max() < 1e-4 and pure[..., :4, :4].mean() > 0.1
    module = ConvAutoencoder(ConvConfig(image_size=(16, 16), conv_channels=(4, 8), latent_dim=4))
    loss = Objective(loss="ssim", ssim_weight=0.5)(module, x, True)
    loss.backward()
    assert loss.item() > 0 and module.to_latent.weight.grad is not None


def test_topk_reduction_is_the_mean_of_the_largest_errors():
    errors = torch.zeros(2, 10, 10)
    errors[0, 0, :5] = 1.0  # five bad pixels of 100
    errors[1] = 0.05  # a broad, small error
    mean = reduce_errors(errors, "mean")
    topk = reduce_errors(errors, "topk", topk_fraction=0.05)
    torch.testing.assert_close(topk, torch.tensor([1.0, 0.05]))
    # The mean ranks the broad error as high as the small defect; top-k separates them.
    assert mean[0] == pytest.approx(mean[1])
    with pytest.raises(ValueError, match="topk_fraction"):
        reduce_errors(errors, "topk", topk_fraction=0)
