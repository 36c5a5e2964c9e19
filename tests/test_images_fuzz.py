"""Property: any bytes given as an image decode to the configured shape or become a reject with a reason.

Inputs are real encoded images (PNG, JPEG, GIF, BMP, TIFF, WebP in several modes) damaged at
random: truncated, bytes flipped, header dimensions rewritten (with and without a valid CRC),
junk prepended, or plain random bytes. No input may raise anything but our named errors.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from anomaly import AnomalyError
from anomaly.data.images import ImageDecodeError, decode_image, read_image_files, read_image_frame

FORMATS = {
    "PNG": ["L", "RGB", "RGBA", "P", "1", "LA", "I;16"],
    "JPEG": ["L", "RGB", "CMYK"],
    "GIF": ["L", "P"],
    "BMP": ["L", "RGB", "1", "P"],
    "TIFF": ["L", "RGB", "RGBA", "1", "I;16", "F"],
    "WEBP": ["RGB", "RGBA"],
}


MAGIC = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"RIFF\x00\x00\x00\x00WEBP",
    b"\x00\x00\x01\x00",  # ICO
    b"8BPS",  # PSD
    b"P6\n",  # PPM
    b"%!PS",
    b"\x00\x00\x00\x0cjP  ",  # JPEG 2000
]


@st.composite
def encoded(draw) -> bytes:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    width, height = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png_with_size(data: bytes, width: int, height: int, fix_crc: bool) -> bytes:
    """``data`` (a PNG) with its IHDR declaring another size."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return data
    ihdr = bytearray(data[8 : 8 + 25])  # length, type, 13 bytes of fields, CRC
    ihdr[8:16] = struct.pack(">II", width, height)
    if fix_crc:
        ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])) & 0xFFFFFFFF)
    return data[:8] + bytes(ihdr) + data[33:]


@st.composite
def blobs(draw) -> bytes:
    how = draw(
        st.sampled_from(
            ["intact", "truncate", "flip", "resize", "junk", "random", "magic", "empty"]
        )
    )
    if how == "random":
        return draw(st.binary(max_size=200))
    if how == "magic":  # a known format's signature, then noise: reaches each format's parser
        return draw(st.sampled_from(MAGIC)) + draw(st.binary(max_size=200))
    if how == "empty":
        return b""
    data = draw(encoded())
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "resize":
        size = st.sampled_from([0, 1, 7, 2**16, 2**31 - 1, 2**32 - 1])
        return _png_with_size(data, draw(size), draw(size), draw(st.booleans()))
    if how == "junk":
        return draw(st.binary(min_size=1, max_size=16)) + data
    return data


settings_ = settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@settings_
@given(
    data=blobs(),
    size=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    channels=st.sampled_from([1, 3]),
    max_pixels=st.sampled_from([64, 10_000, 50_000_000]),
)
def test_decode_gives_the_configured_shape_or_a_reason(data, size, channels, max_pixels):
    try:
        array = decode_image(data, size, channels, max_pixels)
    except ImageDecodeError as error:
        assert str(error).strip()
        event("rejected: " + "".join(c for c in str(error).split("(")[0] if not c.isdigit())[:45])
        return
    event("decoded")
    assert array.shape == (channels, *size)
    assert array.dtype == np.float32
    assert np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0


@settings_
@given(batch=st.lists(st.one_of(blobs(), st.none()), max_size=6))
def test_image_frame_accounts_for_every_row(batch):
    frame = pd.DataFrame({"id": range(len(batch)), "image": pd.Series(batch, dtype=object)})
    try:
        out = read_image_frame(frame, "image", ["id"], (8, 8), 1, max_pixels=10_000, source="x")
    except AnomalyError as error:
        event(f"raised {type(error).__name__}")
        return
    assert len(out) == len(batch)
    assert sorted([*out.index["id"], *out.rejected["id"]]) == list(range(len(batch)))
    assert out.images.shape == (len(out.index), 1, 8, 8)
    assert all(isinstance(r, str) and r.strip() for r in out.rejected["reason"])


@settings_
@given(batch=st.lists(blobs(), min_size=1, max_size=5))
def test_image_files_account_for_every_file(tmp_path_factory, batch):
    folder = tmp_path_factory.mktemp("images")
    files = []
    for i, blob in enumerate(batch):
        files.append(folder / f"{i}.png")
        files[-1].write_bytes(blob)
    out = read_image_files(files, (8, 8), channels=3, max_pixels=10_000)
    assert len(out) == len(files)
    assert sorted([*out.index["path"], *out.rejected["path"]]) == sorted(map(str, files))
    assert out.images.shape == (len(out.index), 3, 8, 8)
    assert all(isinstance(r, str) and r.strip() for r in out.rejected["reason"])


def test_postscript_is_not_handed_to_ghostscript():
    """Pillow opens EPS by default and its load() runs Ghostscript: only raster decoders are used."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with Image.open(io.BytesIO(eps)) as img:  # what Pillow would do left to itself
        assert img.format == "EPS"
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(eps, (8, 8))
