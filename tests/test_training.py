import numpy as np
import pytest
import torch

from anomaly.models import DenseAutoencoder, DenseConfig, Objective
from anomaly.training import (
    TrainingConfig,
    evaluate_loss,
    infer_in_batches,
    make_optimizer,
    resolve_device,
    train_autoencoder,
)


def correlated(n, rng):
    z = rng.normal(size=(n, 2))
    return (z @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(n, 6))).astype(np.float32)


def test_loss_falls_and_best_epoch_is_kept(rng):
    X = correlated(600, rng)
    module = DenseAutoencoder(DenseConfig(6, (16,), 2))
    config = TrainingConfig(epochs=30, batch_size=64, device="cpu", progress=False)
    history = train_autoencoder(module, Objective(), X[:500], X[500:], config)
    assert history.train_loss[-1] < history.train_loss[0] / 3
    assert len(history.val_loss) == len(history.train_loss)
    assert history.val_loss[history.best_epoch - 1] == min(history.val_loss)
    assert not module.training
    assert history.device == "cpu" and history.samples_per_second > 0


def test_early_stopping_stops_before_max_epochs(rng):
    X = rng.normal(size=(200, 4)).astype(
        np.float32
    )  # pure noise: nothing to learn after a few epochs
    module = DenseAutoencoder(DenseConfig(4, (8,), 1))
    config = TrainingConfig(
        epochs=500, batch_size=50, patience=3, learning_rate=1e-2, progress=False
    )
    history = train_autoencoder(module, Objective(), X[:150], X[150:], config)
    assert history.stopped_early
    assert len(history.train_loss) < 500
    assert len(history.train_loss) - history.best_epoch == 3


def test_same_seed_same_weights(rng):
    X = correlated(300, rng)

    def run():
        torch.manual_seed(0)
        module = DenseAutoencoder(DenseConfig(6, (8,), 2))
        train_autoencoder(
            module,
            Objective(noise="gaussian"),
            X,
            None,
            TrainingConfig(epochs=3, seed=7, progress=False),
        )
        return module.state_dict()

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_diverging_loss_is_a_clear_error():
    X = np.full((64, 3), 1e30, dtype=np.float32)
    module = DenseAutoencoder(DenseConfig(3, (4,), 1))
    with pytest.raises(FloatingPointError, match="loss became"):
        train_autoencoder(module, Objective(), X, None, TrainingConfig(epochs=3, progress=False))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else ("mps" if torch.backends.mps.is_available() else "cpu")
    )
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_inference_in_batches_matches_one_pass(rng):
    module = DenseAutoencoder(DenseConfig(6, (8,), 2)).eval()
    X = correlated(103, rng)
    got = infer_in_batches(lambda b: module(b).x_hat, module, X, 10, torch.device("cpu"))
    with torch.no_grad():
        want = module(torch.from_numpy(X)).x_hat.numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert infer_in_batches(
        lambda b: module(b).x_hat, module, X[:0], 10, torch.device("cpu")
    ).shape == (0, 6)


def test_batch_size_one_trains_on_every_row(rng):
    X = correlated(40, rng)
    module = DenseAutoencoder(DenseConfig(6, (8,), 2))
    history = train_autoencoder(
        module, Objective(), X, None, TrainingConfig(epochs=1, batch_size=1, progress=False)
    )
    assert history.samples_per_second * history.seconds == pytest.approx(40)


def test_weights_left_are_those_of_the_best_epoch(rng):
    # Early stopping on noise: the last epochs are worse than the best, so weights left at the
    # last epoch would give a different validation loss than the best one recorded.
    X = rng.normal(size=(300, 4)).astype(np.float32)
    module = DenseAutoencoder(DenseConfig(4, (8,), 1, batch_norm=True))
    config = TrainingConfig(
        epochs=200, batch_size=32, patience=4, learning_rate=3e-2, device="cpu", progress=False
    )
    val = X[240:]
    history = train_autoencoder(module, Objective(), X[:240], val, config)
    assert history.stopped_early and history.best_epoch < len(history.val_loss)
    assert history.val_loss[-1] != history.val_loss[history.best_epoch - 1]
    again = evaluate_loss(module, Objective(), torch.from_numpy(val), 32, torch.device("cpu"))
    assert again == pytest.approx(history.val_loss[history.best_epoch - 1], rel=1e-6)


def test_adam_is_fused_on_cpu():
    module = DenseAutoencoder(DenseConfig(4, (8,), 2))
    config = TrainingConfig(progress=False)
    optimizer = make_optimizer(module, config)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.defaults["fused"] is True
