"""AutoencoderDetector with model="conv": fit on images, scores, error maps, save/load."""

import numpy as np
import pytest

from anomaly import AutoencoderDetector, NotFittedError, SchemaError
from anomaly.data.synthetic import defect_mask, make_blob_images

SIZE = (16, 16)
IMAGE_FAST = {
    "model": "conv",
    "conv_channels": (8, 16),
    "latent_dim": 8,
    "epochs": 15,
    "batch_size": 32,
    "learning_rate": 5e-3,
    "verbose": False,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def normal_images():
    return make_blob_images(250, SIZE, seed=1)


@pytest.fixture(scope="module")
def image_detector(normal_images):
    return AutoencoderDetector(**IMAGE_FAST, reduction="topk", topk_fraction=0.05).fit(
        normal_images[:, 0]  # (n, H, W): one channel implied
    )


def test_fit_returns_self_with_shapes_and_threshold(image_detector, normal_images):
    det = image_detector
    assert det.image_shape_ == (1, *SIZE)
    assert det.fit_info_["n_calibration"] == 50
    assert det.schema_ is None and det.preprocessor_ is None
    new = make_blob_images(30, SIZE, seed=2)
    assert det.score_samples(new).shape == (30,)
    assert det.predict(new).dtype == bool
    p = det.p_values(new)
    assert ((p > 0) & (p <= 1)).all()
    assert det.error_maps(new).shape == (30, *SIZE)
    assert det.reconstruct(new).shape == (30, 1, *SIZE)
    assert det.latent(new).shape == (30, 8)
    # uint8 input scores the same as the same images in [0, 1].
    as_uint8 = np.round(new * 255).astype(np.uint8)
    np.testing.assert_allclose(
        det.score_samples(as_uint8), det.score_samples(as_uint8 / 255.0), rtol=1e-5
    )
    # Calibration normals exceed the threshold about 5% of the time; new normals too.
    assert det.predict(make_blob_images(400, SIZE, seed=3)).mean() < 0.15


def test_defects_score_higher_and_the_error_map_finds_them(image_detector):
    det = image_detector
    normal = make_blob_images(60, SIZE, seed=4)
    defective = make_blob_images(60, SIZE, seed=4, defect=True)
    assert (det.score_samples(defective) > det.score_samples(normal)).mean() > 0.95
    assert det.predict(defective).mean() > 0.9
    maps = det.error_maps(defective)
    mask = defect_mask(SIZE)
    # The pixels with the largest errors are the planted square's, in (almost) every image.
    top = np.argsort(maps.reshape(len(maps), -1), axis=1)[:, -int(mask.sum()) :]
    inside = mask.ravel()[top].mean(axis=1)
    assert inside.mean() > 0.8
    assert np.median(inside) >= 0.875


@pytest.mark.parametrize(
    ("size", "channels", "extra"),
    [
        ((13, 9), 3, {"loss": "ssim", "ssim_weight": 0.5}),
        ((20, 12), 1, {"variational": True, "batch_norm": True}),
        ((8, 8), 1, {"n_estimators": 2, "noise": "gaussian", "loss": "bce"}),
    ],
)
def test_other_sizes_channels_and_variants(size, channels, extra):
    images = make_blob_images(100, size, channels=channels, seed=5)
    det = AutoencoderDetector(**{**IMAGE_FAST, "epochs": 3, "channels": channels, **extra}).fit(
        images
    )
    assert det.image_shape_ == (channels, *size)
    assert det.error_maps(images[:4]).shape == (4, *size)
    assert det.reconstruct(images[:4]).shape == (4, channels, *size)
    assert np.isfinite(det.score_samples(images)).all()


def test_save_load_round_trip_gives_identical_scores(image_detector, tmp_path):
    image_detector.save(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == [
        "calibration.safetensors",
        "detector.json",
        "manifest.json",
        "weights.safetensors",
    ]
    loaded = AutoencoderDetector.load(tmp_path / "model")
    images = make_blob_images(50, SIZE, seed=6, defect=True)
    np.testing.assert_array_equal(
        loaded.score_samples(images), image_detector.score_samples(images)
    )
    np.testing.assert_array_equal(loaded.error_maps(images), image_detector.error_maps(images))
    assert loaded.threshold_ == image_detector.threshold_
    for name in ("model", "loss", "reduction", "topk_fraction", "channels", "latent_dim"):
        assert loaded.get_params()[name] == image_detector.get_params()[name]
    assert loaded.image_shape_ == (1, *SIZE)


def test_wrong_input_is_refused_with_a_clear_error(image_detector):
    with pytest.raises(SchemaError, match="16x16"):
        image_detector.score_samples(np.zeros((2, 12, 12), dtype=np.float32))
    with pytest.raises(SchemaError, match=r"shape \(n, 1, H, W\)"):
        image_detector.score_samples(np.zeros((2, 256)))
    with pytest.raises(TypeError, match="error_maps"):
        image_detector.feature_errors(np.zeros((2, 16, 16)))
    with pytest.raises(NotFittedError):
        AutoencoderDetector(model="conv").error_maps(np.zeros((1, 16, 16)))
    with pytest.raises(ValueError, match="image model"):
        AutoencoderDetector(loss="ssim").fit(np.zeros((50, 3)))
    with pytest.raises(ValueError, match="channels"):
        AutoencoderDetector(model="conv", channels=2).fit(np.zeros((50, 2, 8, 8)))


def test_pyfunc_model_scores_a_frame_of_image_bytes(image_detector):
    import io

    import pandas as pd
    from PIL import Image

    from anomaly.mlflow_model import AnomalyDetectorModel

    def png(image):
        buffer = io.BytesIO()
        Image.fromarray(np.round(image[0] * 255).astype(np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    images = make_blob_images(3, SIZE, seed=7)
    model = AnomalyDetectorModel()
    model.detector = image_detector
    frame = pd.DataFrame({"image": [png(images[0]), b"", png(images[2])]})
    out = model.predict(None, frame)  # type: ignore[arg-type]
    assert len(out) == 3
    assert out["reject_reason"].tolist()[1] == "empty image (0 bytes)"
    assert np.isnan(out["anomaly_score"][1]) and np.isfinite(out["anomaly_score"][[0, 2]]).all()
