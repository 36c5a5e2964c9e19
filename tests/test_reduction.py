"""Every reduction means the same for every kind: a row's element errors to one score."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from anomaly import AutoencoderDetector
from anomaly.data.synthetic import make_blob_images
from anomaly.reduction import reduce_errors, reduce_last, topk_count


def test_topk_count_rounds_and_keeps_at_least_one():
    assert topk_count(100, 0.05) == 5
    assert topk_count(3, 0.05) == 1
    assert topk_count(4, 1.0) == 4
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="topk_fraction must be in"):
            topk_count(10, bad)


def test_reductions_over_rows_and_over_the_last_dimension_agree():
    errors = torch.rand(6, 4, 10, generator=torch.Generator().manual_seed(0))
    for reduction in ("mean", "max", "topk"):
        flat = reduce_errors(errors.reshape(-1, 10), reduction, 0.3).reshape(6, 4)
        assert torch.allclose(reduce_last(errors, reduction, 0.3), flat)
    top3 = errors.reshape(-1, 10).sort(dim=1, descending=True).values[:, :3].mean(dim=1)
    assert torch.allclose(reduce_errors(errors.reshape(-1, 10), "topk", 0.3), top3)


@pytest.fixture(scope="module")
def image_detector():
    images = make_blob_images(120, (16, 16), seed=1)[:, 0]
    return AutoencoderDetector(
        model="conv", epochs=3, batch_size=32, patience=3, verbose=False, image_size=(16, 16)
    ).fit(images), images[:20]


def _scores(detector, data, **params):
    copied = copy.deepcopy(detector)
    for name, value in params.items():
        setattr(copied, name, value)
    return copied.score_samples(data)


@pytest.fixture(params=["table", "series", "images"])
def kind(request, fitted_detector, incoming_table, fitted_series_detector, series_table):
    if request.param == "table":
        return fitted_detector, incoming_table.iloc[:200]
    if request.param == "series":
        return fitted_series_detector, series_table.iloc[:300]
    return request.getfixturevalue("image_detector")


def test_topk_honours_topk_fraction_for_every_kind(kind):
    detector, data = kind
    mean = _scores(detector, data, reduction="mean")
    peak = _scores(detector, data, reduction="max")
    every = _scores(detector, data, reduction="topk", topk_fraction=1.0)
    one = _scores(detector, data, reduction="topk", topk_fraction=1e-6)
    half = _scores(detector, data, reduction="topk", topk_fraction=0.5)
    seen = ~np.isnan(mean)  # series: points before the first full window have no score
    assert seen.sum() > 10
    # All elements averaged is the mean; the single largest is the max; half lies between.
    np.testing.assert_allclose(every[seen], mean[seen], rtol=1e-5)
    np.testing.assert_allclose(one[seen], peak[seen], rtol=1e-6)
    assert np.all(half[seen] >= mean[seen] * (1 - 1e-6))
    assert np.all(half[seen] <= peak[seen] * (1 + 1e-6))
    assert not np.allclose(half[seen], peak[seen]) and not np.allclose(half[seen], mean[seen])


def test_a_topk_fraction_outside_0_1_is_refused_at_fit(normal_table):
    with pytest.raises(ValueError, match="topk_fraction must be in"):
        AutoencoderDetector(reduction="topk", topk_fraction=0.0, epochs=1).fit(normal_table)
