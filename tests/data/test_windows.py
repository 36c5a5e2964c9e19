import numpy as np
import pytest
import torch

from anomaly.data.windows import PointFold, fold_window_errors, sliding_windows


def test_sliding_windows_by_hand():
    values = np.arange(10, dtype=float)[:, None]
    windows = sliding_windows(values, window=4, stride=3)
    assert windows.shape == (3, 4, 1)
    assert windows[:, :, 0].tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]


def test_sliding_windows_keeps_features_per_step():
    values = np.arange(12, dtype=float).reshape(6, 2)
    windows = sliding_windows(values, window=3)
    assert windows.shape == (4, 3, 2)
    np.testing.assert_array_equal(windows[1], values[1:4])


def test_series_shorter_than_window_has_no_windows():
    assert sliding_windows(np.zeros((3, 2)), window=4).shape == (0, 4, 2)


# Three windows of two points over four points: window s covers points s and s + 1.
ERRORS = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])


@pytest.mark.parametrize(
    ("reduction", "expected"),
    [
        ("mean", [1.0, 2.5, 4.5, 6.0]),  # point 1 is covered by window 0 (2) and window 1 (3)
        ("max", [1.0, 3.0, 5.0, 6.0]),
        ("last", [1.0, 2.0, 4.0, 6.0]),  # the window that ends at the point
    ],
)
def test_fold_by_hand(reduction, expected):
    np.testing.assert_allclose(fold_window_errors(ERRORS, reduction).numpy(), expected)


def test_fold_in_batches_equals_fold_at_once(rng):
    errors = torch.as_tensor(rng.random((50, 7, 3)), dtype=torch.float32)
    for reduction in ("mean", "max", "last"):
        fold = PointFold(56, 7, 3, reduction)
        for first in (30, 0, 10):  # out of order on purpose
            fold.add(
                errors[first : first + (20 if first == 30 else 10 if first == 0 else 20)], first
            )
        torch.testing.assert_close(fold.result(), fold_window_errors(errors, reduction))


def test_points_no_window_covers_are_nan():
    fold = PointFold(5, 2, 1, "mean")
    fold.add(torch.ones(1, 2, 1), 0)
    result = fold.result()[:, 0]
    assert result[:2].tolist() == [1.0, 1.0]
    assert torch.isnan(result[2:]).all()


def test_unknown_reduction_is_refused():
    with pytest.raises(ValueError, match="point reduction"):
        PointFold(3, 2, 1, "median")  # type: ignore[arg-type]


def test_min_fold_by_hand():
    np.testing.assert_allclose(fold_window_errors(ERRORS, "min").numpy(), [1.0, 2.0, 4.0, 6.0])
