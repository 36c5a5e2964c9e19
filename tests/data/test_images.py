"""Image ingest: folders and Parquet, decoding, resizing, rejects with reasons."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from anomaly.data.images import (
    as_image_array,
    decode_image,
    list_image_sources,
    probe_image_size,
    read_images,
)
from anomaly.data.parquet import write_parquet_atomic
from anomaly.errors import DataFileError, SchemaError


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def gray(value: int, size=(12, 10)) -> np.ndarray:
    return np.full(size, value, dtype=np.uint8)


def test_decode_converts_mode_size_and_scale():
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    out = decode_image(encode(rgb), (10, 15), channels=1)
    assert out.shape == (1, 10, 15) and out.dtype == np.float32
    np.testing.assert_allclose(out, 76 / 255, atol=1 / 255)  # ITU-R 601 luma of pure red
    out3 = decode_image(encode(gray(255)), (12, 10), channels=3)
    assert out3.shape == (3, 12, 10)
    np.testing.assert_allclose(out3, 1.0)
    jpeg = decode_image(encode(gray(128), "JPEG"), (12, 10))
    np.testing.assert_allclose(jpeg, 128 / 255, atol=3 / 255)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "0 bytes"),
        (b"this is not an image at all", "not a recognised image"),
        (encode(gray(10, (64, 64)))[:60], "truncated"),
    ],
)
def test_unusable_bytes_give_a_reason(data, reason):
    from anomaly.data.images import ImageDecodeError

    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, (8, 8))


def test_pixel_limit_rejects_image_bombs_before_decoding():
    from anomaly.data.images import ImageDecodeError

    with pytest.raises(ImageDecodeError, match="exceeds the limit of 100 pixels"):
        decode_image(encode(gray(0, (20, 20))), (8, 8), max_pixels=100)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(encode(gray(0)))
    (root / "sub" / "b.jpg").write_bytes(encode(gray(200), "JPEG"))
    (root / "sub" / "c.PNG").write_bytes(encode(gray(255, (24, 20))))  # other size: resized
    (root / "empty.png").write_bytes(b"")
    (root / "broken.png").write_bytes(encode(gray(7, (64, 64)))[:70])
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def test_folder_ingest_scores_the_rest_and_rejects_corrupt_files(image_folder):
    batch = read_images(image_folder, (12, 10))
    assert len(batch) == 5  # rows in = decoded + rejected; the .txt file is not an image
    assert batch.images.shape == (3, 1, 12, 10)
    names = [p.split("/")[-1] for p in batch.index["path"]]
    assert names == ["a.png", "b.jpg", "c.PNG"]
    assert (batch.index["path"] == batch.index["source_file"]).all()
    np.testing.assert_allclose(batch.images[2], 1.0)
    reasons = dict(
        zip(batch.rejected["path"].str.split("/").str[-1], batch.rejected["reason"], strict=False)
    )
    assert set(reasons) == {"empty.png", "broken.png"}
    assert "0 bytes" in reasons["empty.png"] and "truncated" in reasons["broken.png"]
    assert probe_image_size(image_folder) == (12, 10)


def test_parquet_ingest_keeps_keys_and_rejects_bad_rows(tmp_path):
    frame = pd.DataFrame(
        {
            "item_id": [10, 11, 12, 13],
            "camera": ["a", "a", "b", "b"],
            "image": [encode(gray(0)), b"garbage", None, encode(gray(255))],
        }
    )
    write_parquet_atomic(frame.iloc[:2], tmp_path / "p" / "one.parquet")
    write_parquet_atomic(frame.iloc[2:], tmp_path / "p" / "two.parquet")
    batch = read_images(tmp_path / "p", (12, 10), key_columns=["item_id", "camera"])
    assert len(batch) == 4
    assert batch.index["item_id"].tolist() == [10, 13]
    assert batch.index["source_row"].tolist() == [0, 1]
    assert batch.index["source_file"].str.endswith(("one.parquet", "two.parquet")).all()
    assert batch.rejected["item_id"].tolist() == [11, 12]
    assert batch.rejected["reason"].str.contains("not a recognised image").iloc[0]
    assert batch.rejected["reason"].iloc[1] == "missing image (null)"
    # A file without the key column is set aside whole, and the others still read.
    write_parquet_atomic(frame.drop(columns="camera"), tmp_path / "p" / "three.parquet")
    partial = read_images(tmp_path / "p", (12, 10), key_columns=["item_id", "camera"])
    assert len(partial) == 4 and len(partial.images) == 2
    (entry,) = partial.quarantined
    assert entry.source_file.endswith("three.parquet") and entry.rows == 4
    assert entry.reason.startswith("missing column 'camera'")


def test_sources_are_classified_and_mixtures_refused(tmp_path, image_folder):
    with pytest.raises(DataFileError, match="no such file"):
        list_image_sources(tmp_path / "nope")
    (image_folder / "table.parquet").write_bytes(b"x")
    with pytest.raises(DataFileError, match="mixes image files"):
        list_image_sources(image_folder)
    kind, files = list_image_sources(str(image_folder / "sub" / "*.jpg"))
    assert kind == "images" and len(files) == 1


def test_arrays_are_checked_and_scaled():
    assert as_image_array(np.full((2, 5, 6), 255, np.uint8), 1).max() == 1.0
    assert as_image_array(np.zeros((2, 3, 5, 6)), 3, (5, 6)).shape == (2, 3, 5, 6)
    with pytest.raises(SchemaError, match="shape"):
        as_image_array(np.zeros((2, 5, 6)), 3)
    with pytest.raises(SchemaError, match="5x7"):
        as_image_array(np.zeros((2, 5, 6)), 1, (5, 7))
    with pytest.raises(SchemaError, match=r"in \[0, 1\]"):
        as_image_array(np.full((2, 5, 6), 3.0), 1)
    with pytest.raises(SchemaError, match="NaN"):
        as_image_array(np.full((2, 5, 6), np.nan), 1)
