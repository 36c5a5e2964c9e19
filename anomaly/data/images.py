"""Image ingest: folders of PNG/JPEG files and Parquet files with an image-bytes column.

Every image is decoded with Pillow, converted to the configured mode (``L`` for one channel,
``RGB`` for three) and size, and scaled to [0, 1] as float32 ``(channels, height, width)``.

Resize policy: an image of another size is resized to exactly ``image_size`` with Pillow's
bilinear filter (antialiased when shrinking); the aspect ratio is not kept, so feed images of
the aspect ratio the model was trained on. Images that cannot be used (zero bytes, truncated,
not an image, more pixels than ``max_pixels``) are returned as rejects with the reason; the
rest of the batch goes on.
"""

from __future__ import annotations

import io
import logging
import os
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from anomaly.data.paths import PARQUET_SUFFIXES, list_inputs
from anomaly.errors import DataFileError, SchemaError
from anomaly.quarantine import QuarantinedFile

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
MODES: dict[int, str] = {1: "L", 3: "RGB"}
# Decoders Pillow may use. Without a list it tries every plugin it has, EPS among them, whose
# load() runs Ghostscript on the file where Ghostscript is installed: untrusted bytes should
# reach only the plain raster decoders.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
# Refuse images above this many pixels before decoding them (decompression bombs: a small file
# that expands to gigabytes). 50 megapixels is far above any camera frame a monitor would score.
DEFAULT_MAX_PIXELS = 50_000_000
PATH_COLUMN = "path"


class ImageDecodeError(ValueError):
    """One image cannot be used; the message is the reject reason."""


def decode_image(
    data: bytes,
    image_size: tuple[int, int],
    channels: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode encoded image bytes to a float32 array ``(channels, height, width)`` in [0, 1].

    Raises
    ------
    ImageDecodeError
        With the reason: empty data, not a recognised image, too many pixels, truncated or
        corrupt data.
    """
    if channels not in MODES:
        raise ValueError(f"channels must be one of {sorted(MODES)}, got {channels}")
    if not data:
        raise ImageDecodeError("empty image (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's global one (which only warns up to
            # twice its limit); a bomb above Pillow's hard limit is an error caught here too.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
                width, height = img.size  # read from the header, nothing decoded yet
                if width * height > max_pixels:
                    raise ImageDecodeError(
                        f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels"
                    )
                img.load()
                converted = img.convert(MODES[channels])
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError(f"image exceeds the pixel limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not a recognised image (expected PNG or JPEG)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and corrupt streams as OSError (or SyntaxError for bad headers).
        raise ImageDecodeError(f"corrupt or truncated image ({exc})") from exc
    height_out, width_out = image_size
    if converted.size != (width_out, height_out):
        converted = converted.resize((width_out, height_out), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.float32) / 255.0
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


@dataclass(frozen=True)
class ImageBatch:
    """Decoded images with their keys, and the images that could not be decoded.

    Attributes
    ----------
    images : ndarray of shape (n_ok, channels, height, width)
        float32 in [0, 1].
    index : DataFrame
        One row per decoded image, aligned with ``images``: key columns and ``source_file``
        (plus ``source_row`` for Parquet input).
    rejected : DataFrame
        Key columns, ``reason``, ``source_file`` (and ``source_row``) of the images left out.
    quarantined : tuple of QuarantinedFile
        Parquet files set aside whole (unreadable, no image column ...), with the reason.
    """

    images: np.ndarray
    index: pd.DataFrame
    rejected: pd.DataFrame
    quarantined: tuple[QuarantinedFile, ...] = ()

    @property
    def key_columns(self) -> list[str]:
        return [c for c in self.index.columns if c not in ("source_file", "source_row")]

    def __len__(self) -> int:
        return len(self.images) + len(self.rejected)

    def subset(self, rows: np.ndarray, keep_rejected: bool = False) -> ImageBatch:
        """The decoded images at positions ``rows`` (and the rejects, with ``keep_rejected``)."""
        rejected = self.rejected if keep_rejected else self.rejected.iloc[:0]
        return ImageBatch(self.images[rows], self.index.iloc[rows].reset_index(drop=True), rejected)


def _decode_all(
    blobs: Iterable[bytes | None],
    keys: pd.DataFrame,
    image_size: tuple[int, int],
    channels: int,
    max_pixels: int,
) -> ImageBatch:
    height, width = image_size
    arrays: list[np.ndarray] = []
    ok: list[bool] = []
    reasons: list[str] = []
    for blob in blobs:
        try:
            if blob is None:
                raise ImageDecodeError("missing image (null)")
            arrays.append(decode_image(blob, image_size, channels, max_pixels))
            ok.append(True)
        except ImageDecodeError as exc:
            ok.append(False)
            reasons.append(str(exc))
    mask = np.asarray(ok, dtype=bool)
    images = np.stack(arrays) if arrays else np.zeros((0, channels, height, width), np.float32)
    rejected = keys.loc[~mask].reset_index(drop=True)
    rejected.insert(len(rejected.columns), "reason", pd.Series(reasons, dtype="string"))
    return ImageBatch(images, keys.loc[mask].reset_index(drop=True), rejected)


def list_image_sources(source: str | os.PathLike[str]) -> tuple[str, list[Path]]:
    """Classify ``source`` as image files or Parquet files and list them sorted.

    ``source`` may be one file, a directory (searched recursively) or a glob. Returns
    ``("images", files)`` or ``("parquet", files)``.

    Raises
    ------
    DataFileError
        If nothing matches, or if Parquet and image files are mixed.
    """
    text = os.fspath(source)
    listing = list_inputs(source, (*IMAGE_SUFFIXES, *PARQUET_SUFFIXES))
    listing.log_skipped(text)
    candidates = list(listing.files)
    images = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES)
    tables = sorted(p for p in candidates if p.suffix.lower() in PARQUET_SUFFIXES)
    if images and tables:
        raise DataFileError(
            f"{text}: mixes image files ({images[0]}) and Parquet files ({tables[0]}); give one kind"
        )
    if not images and not tables:
        raise DataFileError(
            f"{text}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} and .parquet)"
        )
    return ("images", images) if images else ("parquet", tables)


def read_image_files(
    files: Sequence[Path],
    image_size: tuple[int, int],
    channels: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageBatch:
    """Decode image files; the key column ``path`` (and ``source_file``) is each file's path."""
    names = [str(p) for p in files]
    keys = pd.DataFrame(
        {PATH_COLUMN: pd.Series(names, dtype="string"), "source_file": names}, dtype="string"
    )

    def blobs() -> Iterable[bytes | None]:
        for file in files:
            try:
                yield file.read_bytes()
            except OSError as exc:
                logger.warning("%s: cannot read (%s)", file, exc)
                yield None

    batch = _decode_all(blobs(), keys, image_size, channels, max_pixels)
    logger.info("decoded %d of %d images", len(batch.images), len(files))
    return batch


def read_image_frame(
    frame: pd.DataFrame,
    image_column: str,
    key_columns: Sequence[str],
    image_size: tuple[int, int],
    channels: int = 1,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    source: str | None = None,
) -> ImageBatch:
    """Decode the image-bytes column of a table; keys, ``source_row`` (and ``source_file``) kept."""
    for column in (image_column, *key_columns):
        if column not in frame.columns:
            raise SchemaError(
                f"missing column {column!r} (image bytes column {image_column!r}, keys "
                f"{list(key_columns)}); found {list(map(str, frame.columns))}",
                column=column,
                source=source,
            )
    keys = frame[list(key_columns)].reset_index(drop=True)
    if source is not None:
        keys["source_file"] = source
    keys["source_row"] = np.arange(len(frame), dtype=np.int64)
    values = frame[image_column].tolist()
    bad_type = next((v for v in values if v is not None and not isinstance(v, bytes)), None)
    if bad_type is not None:
        raise SchemaError(
            f"column {image_column!r} must hold encoded image bytes, found {type(bad_type).__name__}",
            column=image_column,
            source=source,
        )
    return _decode_all(values, keys, image_size, channels, max_pixels)


def read_images(
    source: str | os.PathLike[str],
    image_size: tuple[int, int],
    channels: int = 1,
    image_column: str = "image",
    key_columns: Sequence[str] = (),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ImageBatch:
    """Read a folder of images (recursively), one image, Parquet files with image bytes, or a glob.

    Folder input is keyed by file path (column ``path``); Parquet input by ``key_columns``
    with ``source_file`` and ``source_row``. Undecodable images are in ``rejected`` with a reason.
    """
    kind, files = list_image_sources(source)
    if kind == "images":
        return read_image_files(files, image_size, channels, max_pixels)
    parts = []
    quarantined = []
    for file in files:
        rows = None
        try:
            try:
                table = pq.read_table(file)
            except Exception as exc:  # pyarrow raises several types for a broken file
                raise DataFileError(
                    f"{file}: cannot read as Parquet ({exc})", source=str(file)
                ) from exc
            rows = table.num_rows
            part = read_image_frame(
                table.to_pandas(),
                image_column,
                key_columns,
                image_size,
                channels,
                max_pixels,
                str(file),
            )
        except (DataFileError, SchemaError) as exc:
            quarantined.append(QuarantinedFile.of(file, exc, rows))
            continue
        parts.append(part)
        logger.info("%s: decoded %d of %d images", file, len(part.images), rows)
    if not parts:  # every file quarantined: an empty batch with the usual columns
        empty = pd.DataFrame(columns=[image_column, *key_columns])
        parts = [
            read_image_frame(empty, image_column, key_columns, image_size, channels, max_pixels, "")
        ]
    return ImageBatch(
        np.concatenate([p.images for p in parts]),
        pd.concat([p.index for p in parts], ignore_index=True),
        pd.concat([p.rejected for p in parts], ignore_index=True),
        tuple(quarantined),
    )


def probe_image_size(
    source: str | os.PathLike[str], image_column: str = "image"
) -> tuple[int, int]:
    """``(height, width)`` of the first readable image of ``source``, for training without a size."""
    kind, files = list_image_sources(source)
    if kind == "images":
        blobs: Iterable[bytes] = (f.read_bytes() for f in files)
    else:
        blobs = (
            b
            for f in files
            for b in pq.read_table(f, columns=[image_column]).column(0).to_pylist()
            if b
        )
    for blob in blobs:
        try:
            with Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS) as img:
                return img.size[1], img.size[0]
        except (OSError, UnidentifiedImageError):
            continue
    raise DataFileError(f"{source}: no readable image to take the image size from")


def as_image_array(
    X: np.ndarray, channels: int, image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Check and convert images to float32 ``(n, channels, height, width)`` in [0, 1].

    Accepts ``(n, H, W)`` (one channel) or ``(n, C, H, W)``, uint8 (0-255) or float in [0, 1].

    Raises
    ------
    SchemaError
        On a wrong shape, channel count, size, or values outside [0, 1] / non-finite.
    """
    array = np.asarray(X)
    if array.ndim == 3 and channels == 1:
        array = array[:, None]
    expected = f"(n, {channels}, H, W)" + (" or (n, H, W)" if channels == 1 else "")
    if array.ndim != 4 or array.shape[1] != channels:
        raise SchemaError(f"expected images of shape {expected}, got {array.shape}")
    if image_size is not None and tuple(array.shape[2:]) != tuple(image_size):
        raise SchemaError(
            f"expected images of {image_size[0]}x{image_size[1]} pixels, got "
            f"{array.shape[2]}x{array.shape[3]}; resize them (the folder and Parquet readers do)"
        )
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise SchemaError(f"expected uint8 or float images, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        first = np.argwhere(~finite)[0]
        raise SchemaError(
            f"float images must be finite: {int((~finite).sum())} NaN/inf values (first in image {first[0]})"
        )
    if len(array) and (array.min() < 0 or array.max() > 1):
        raise SchemaError(
            f"float images must be in [0, 1], got values in [{array.min()}, {array.max()}]; "
            "scale them, or pass uint8 (0-255)"
        )
    return array


def write_png_atomic(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 image ``(H, W)`` or ``(H, W, 3)`` as PNG through a temporary file and rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
