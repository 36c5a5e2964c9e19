import pytest
import torch

from anomaly.models import DenseConfig
from anomaly.models.sequence import (
    Conv1dAutoencoder,
    Conv1dConfig,
    LSTMSeq2SeqAutoencoder,
    LSTMSeq2SeqConfig,
    WindowedDense,
)


def modules(n_features: int, window: int):
    return [
        LSTMSeq2SeqAutoencoder(LSTMSeq2SeqConfig(n_features, hidden_size=16, latent_dim=8)),
        LSTMSeq2SeqAutoencoder(
            LSTMSeq2SeqConfig(n_features, hidden_size=16, num_layers=1, bidirectional=False)
        ),
        Conv1dAutoencoder(Conv1dConfig(n_features, channels=(8, 4))),
        Conv1dAutoencoder(Conv1dConfig(n_features, channels=(8, 8, 4), kernel_size=3)),
        WindowedDense(DenseConfig(n_features * window, (32,), 8), window),
    ]


@pytest.mark.parametrize(("window", "n_features"), [(7, 1), (10, 3), (60, 8), (64, 2)])
def test_reconstruction_has_the_window_shape(window, n_features):
    x = torch.randn(5, window, n_features)
    for module in modules(n_features, window):
        module.eval()
        out = module(x)
        assert out.x_hat.shape == x.shape, type(module).__name__
        assert out.z.shape[0] == 5


def test_lstm_latent_is_the_bottleneck():
    config = LSTMSeq2SeqConfig(3, hidden_size=16, latent_dim=4)
    module = LSTMSeq2SeqAutoencoder(config).eval()
    out = module(torch.randn(2, 12, 3))
    assert out.z.shape == (2, 4)
    # Decoding depends on the input only through z: the same code gives the same window.
    with torch.no_grad():
        decoded, _ = module.decoder(out.z[:1].unsqueeze(1).expand(1, 12, 4))
        torch.testing.assert_close(module.output(decoded), out.x_hat[:1])


def test_variational_lstm_samples_in_training_only():
    module = LSTMSeq2SeqAutoencoder(LSTMSeq2SeqConfig(2, hidden_size=8, variational=True))
    x = torch.randn(4, 9, 2)
    out = module.train()(x)
    assert out.mu is not None and out.logvar is not None
    module.eval()
    torch.testing.assert_close(module(x).x_hat, module(x).x_hat)


def test_conv1d_trains_on_a_window_length_not_a_multiple_of_its_stride():
    torch.manual_seed(0)
    module = Conv1dAutoencoder(Conv1dConfig(2, channels=(8, 4), dropout=0.0))
    x = torch.sin(torch.linspace(0, 6, 30)).repeat(16, 2, 1).transpose(1, 2)  # (16, 30, 2)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = (module(x).x_hat - x).square().mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < first / 5


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="odd"):
        Conv1dConfig(2, kernel_size=4)
    with pytest.raises(ValueError, match="positive"):
        LSTMSeq2SeqConfig(2, hidden_size=0)
