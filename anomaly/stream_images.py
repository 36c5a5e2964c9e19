"""Streaming scoring of image inputs in bounded memory: decoded, scored and written a chunk at a time.

The images of a folder (or the rows of Parquet files with an image-bytes column) are decoded
:data:`DEFAULT_CHUNK_IMAGES` at a time, the next chunk decoding in a background thread while
this one runs through the network; each chunk's scored and rejected rows are appended to hidden
temporary files, renamed into place only when every image is accounted for (as for tables, see
:mod:`anomaly.stream_sinks`). Flagged images' heat maps are written with their chunk, and a
running top-k of the highest-scoring images is kept for the scoring run's review.

Rows, scores, columns and reasons are those of :func:`anomaly.scoring.score_images` on
:func:`anomaly.data.images.read_images` of the whole input, written by
:func:`anomaly.file_scoring.write_outputs`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from anomaly.data.images import (
    DEFAULT_MAX_PIXELS,
    PATH_COLUMN,
    ImageBatch,
    list_image_sources,
    read_image_files,
    read_image_frame,
)
from anomaly.errors import DataFileError, SchemaError
from anomaly.heatmaps import HeatmapWriter
from anomaly.quarantine import QuarantinedFile, quarantine_path_for
from anomaly.scoring import ImageReview, score_images
from anomaly.stream_sinks import (
    SCORE_SAMPLE_SIZE,
    ParquetSink,
    ScoreSample,
    StreamResult,
    conform,
)
from anomaly.stream_sources import READ_OPTIONS, ParquetSource
from anomaly.streaming import (
    finish_quarantine,
    prefetch,
    progress_bar,
    run_with_quarantine,
    torch_threads,
)

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector

logger = logging.getLogger(__name__)

# 1024 images: four forward batches of 256, so the per-chunk work (frames, Arrow conversion, a
# row group per output) is small beside the network's; 28x28 grey images are 3 MiB a chunk.
DEFAULT_CHUNK_IMAGES = 1024
# Large images get fewer per chunk, so a chunk's float32 pixels stay under this many bytes
# (224x224 RGB: 445 images, 256 MiB).
CHUNK_BYTES = 256 << 20
# Images kept for the review plot of the scoring run (``plots/top_scoring_images.png``).
TOP_K = 8
# pandas' text type as Arrow writes it (large_string): the in-memory path's outputs have it.
_TEXT = pa.Schema.from_pandas(pd.DataFrame({"x": pd.Series([], dtype="string")})).field(0).type


def chunk_size(image_shape: Sequence[int], chunk_images: int = DEFAULT_CHUNK_IMAGES) -> int:
    """Images per chunk for images of ``image_shape`` ``(C, H, W)``: at most ``chunk_images``
    and at most :data:`CHUNK_BYTES` of float32 pixels, at least one."""
    per_image = 4 * int(np.prod(image_shape))
    return max(1, min(chunk_images, CHUNK_BYTES // per_image))


def image_output_schemas(
    keys: Sequence[pa.Field], parquet: bool, heatmaps: bool
) -> tuple[pa.Schema, pa.Schema]:
    """Schemas of the scored and rejects files of an image run, as the in-memory path writes them.

    Scored: the keys, the score columns, ``source_file`` (and ``source_row`` for Parquet input,
    ``heatmap`` with heat maps). Rejects: the keys, ``source_file`` (``source_row``), ``reason``.
    """
    where = [pa.field("source_file", _TEXT)]
    if parquet:
        where.append(pa.field("source_row", pa.int64()))
    scores = [
        pa.field("anomaly_score", pa.float64()),
        pa.field("p_value", pa.float64()),
        pa.field("is_anomaly", pa.bool_()),
        pa.field("threshold", pa.float64()),
        pa.field("model_name", _TEXT),
        pa.field("model_version", _TEXT),
    ]
    heatmap = [pa.field("heatmap", _TEXT)] if heatmaps else []
    scored = pa.schema([*keys, *scores, *where, *heatmap])
    return scored, pa.schema([*keys, *where, pa.field("reason", _TEXT)])


def _key_fields(sources: Sequence[ParquetSource], key_columns: Sequence[str]) -> list[pa.Field]:
    """Key columns typed as they come back from pandas (what the in-memory path writes)."""
    if not sources:  # every file quarantined: no types to copy
        return [pa.field(k, pa.null()) for k in key_columns]
    empty = sources[0].schema.empty_table().select(list(key_columns)).to_pandas()
    return list(pa.Schema.from_pandas(empty, preserve_index=False))


def plan_image_sources(
    files: Sequence[Path], image_column: str, key_columns: Sequence[str]
) -> tuple[list[ParquetSource], list[QuarantinedFile]]:
    """Read the footers of Parquet image files; set aside, with the reason, those that cannot be
    scored (not Parquet, the image or a key column missing, an image column not of bytes)."""
    sources: list[ParquetSource] = []
    quarantined: list[QuarantinedFile] = []
    for path in files:
        rows = None
        try:
            try:
                st = path.stat()
                meta = pq.ParquetFile(path).metadata
                schema = meta.schema.to_arrow_schema()
            except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
                raise DataFileError(
                    f"{path}: cannot read as Parquet ({exc})", source=str(path)
                ) from exc
            rows = meta.num_rows
            for column in (image_column, *key_columns):
                if column not in schema.names:
                    raise SchemaError(
                        f"missing column {column!r} (image bytes column "
                        f"{image_column!r}, keys {list(key_columns)}); found {schema.names}",
                        column=column,
                        source=str(path),
                    )
            kind = schema.field(image_column).type
            if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
                if not pa.types.is_null(kind):
                    raise SchemaError(
                        f"column {image_column!r} must hold encoded image bytes, found {kind}",
                        column=image_column,
                        source=str(path),
                    )
        except (DataFileError, SchemaError) as exc:
            quarantined.append(QuarantinedFile.of(path, exc, rows))
            continue
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        sources.append(
            ParquetSource(path, schema, meta.num_rows, groups, stat=(st.st_size, st.st_mtime_ns))
        )
    return sources, quarantined


def _folder_chunks(
    files: Sequence[Path], image_shape: tuple[int, int, int], chunk: int, max_pixels: int
) -> Iterator[ImageBatch]:
    channels, height, width = image_shape
    for first in range(0, len(files), chunk):
        yield read_image_files(files[first : first + chunk], (height, width), channels, max_pixels)


def _parquet_chunks(
    sources: Sequence[ParquetSource],
    image_column: str,
    key_columns: Sequence[str],
    image_shape: tuple[int, int, int],
    chunk: int,
    max_pixels: int,
) -> Iterator[ImageBatch]:
    channels, height, width = image_shape
    columns = list(dict.fromkeys([*key_columns, image_column]))
    for source in sources:
        source.check_unchanged()
        name = str(source.path)
        first = 0
        try:
            parquet = pq.ParquetFile(source.path, **READ_OPTIONS)
            for record_batch in parquet.iter_batches(batch_size=chunk, columns=columns):
                part = read_image_frame(
                    pa.Table.from_batches([record_batch]).to_pandas(),
                    image_column,
                    key_columns,
                    (height, width),
                    channels,
                    max_pixels,
                    name,
                )
                part.index["source_row"] += first
                part.rejected["source_row"] += first
                first += record_batch.num_rows
                yield part
        except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
            raise DataFileError(f"{name}: cannot read as Parquet ({exc})", source=name) from exc
        if first != source.num_rows:
            raise DataFileError(
                f"{name}: changed while the run was under way ({source.num_rows} rows when "
                f"planned, {first} read); score it again once it is complete",
                source=name,
            )


@dataclass
class TopImages:
    """The ``k`` highest-scoring images seen so far, highest first (earlier rows first on ties,
    as a stable sort of all the scores would give), with their reconstructions and error maps."""

    k: int = TOP_K
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    images: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    error_maps: np.ndarray | None = None

    def add(self, review: ImageReview, first_row: int) -> None:
        """Merge a chunk's top images, whose rows start at ``first_row`` of the scored output."""
        if not len(review.top_rows) or review.top_scores is None:
            return
        rows = np.concatenate([self.rows, review.top_rows + first_row])
        scores = np.concatenate([self.scores, review.top_scores])
        keep = np.argsort(-scores, kind="stable")[: self.k]

        def merged(held: np.ndarray | None, new: np.ndarray) -> np.ndarray:
            return (new if held is None else np.concatenate([held, new]))[keep]

        self.images = merged(self.images, review.top_images)
        self.reconstructions = merged(self.reconstructions, review.top_reconstructions)
        self.error_maps = merged(self.error_maps, review.top_error_maps)
        self.rows, self.scores = rows[keep], scores[keep]

    def review(self) -> ImageReview | None:
        if self.images is None or self.reconstructions is None or self.error_maps is None:
            return None
        none = np.zeros(0, np.int64)
        return ImageReview(
            top_rows=self.rows,
            top_images=self.images,
            top_reconstructions=self.reconstructions,
            top_error_maps=self.error_maps,
            flagged_rows=none,
            flagged_error_maps=np.zeros((0, *self.error_maps.shape[1:]), np.float32),
            top_scores=self.scores,
        )


def score_image_files(
    detector: AutoencoderDetector,
    data: str | os.PathLike[str],
    output: str | os.PathLike[str],
    rejects: str | os.PathLike[str],
    model_name: str = "",
    model_version: str = "",
    heatmaps: str | os.PathLike[str] | None = None,
    chunk_images: int = DEFAULT_CHUNK_IMAGES,
    quarantine: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> StreamResult:
    """Score an image folder, image file, Parquet files with an image-bytes column, or a glob,
    into two Parquet files, :func:`chunk_size` images at a time.

    Memory is bounded by a couple of chunks whatever the number of images. Every image ends up
    in exactly one of ``output`` and ``rejects`` (undecodable ones, with the reason); Parquet
    files that cannot be scored are listed in ``quarantine`` (default beside the output) while
    the others are scored. With ``heatmaps`` (a folder), each flagged image's heat map is
    written there as it is scored (see :mod:`anomaly.heatmaps`) and its path goes in the
    ``heatmap`` column. The result's ``images`` holds the :data:`TOP_K` highest-scoring images.

    Raises
    ------
    DataFileError
        ``data`` names no image or Parquet file, or mixes the two.
    """
    detector._check_fitted()
    shape = detector.image_shape_
    chunk = chunk_size(shape, chunk_images)
    kind, files = list_image_sources(data)
    out, rej = Path(output), Path(rejects)

    def run(chunks: Iterator[ImageBatch], n_rows: int, keys: list[pa.Field]) -> StreamResult:
        schemas = image_output_schemas(keys, kind == "parquet", heatmaps is not None)
        writer = None if heatmaps is None else HeatmapWriter(heatmaps, detector.threshold_)
        return _score_chunks(
            detector, chunks, n_rows, out, rej, schemas, model_name, model_version, writer, progress
        )

    quarantined: list[QuarantinedFile] = []
    with torch_threads(None, detector.device_):
        if kind == "images":
            chunks = _folder_chunks(files, shape, chunk, max_pixels)
            result = run(chunks, len(files), [pa.field(PATH_COLUMN, _TEXT)])
        else:
            column, key_columns = detector.image_column, list(detector.key_columns)
            sources, quarantined = plan_image_sources(files, column, key_columns)

            def run_sources(remaining: list[ParquetSource]) -> StreamResult:
                chunks = _parquet_chunks(remaining, column, key_columns, shape, chunk, max_pixels)
                n_rows = sum(s.num_rows for s in remaining)
                return run(chunks, n_rows, _key_fields(remaining, key_columns))

            result = run_with_quarantine(run_sources, sources, quarantined)
    logger.info(
        "%s: %d scored, %d rejected, %d flagged",
        data,
        result.n_scored,
        result.n_rejected,
        result.n_flagged,
    )
    return finish_quarantine(result, quarantined, quarantine or quarantine_path_for(output))


def _score_chunks(
    detector: AutoencoderDetector,
    chunks: Iterator[ImageBatch],
    n_rows: int,
    output: Path,
    rejects: Path,
    schemas: tuple[pa.Schema, pa.Schema],
    model_name: str,
    model_version: str,
    heatmaps: HeatmapWriter | None,
    progress: bool | None,
) -> StreamResult:
    if rejects.resolve() == output.resolve():
        raise ValueError(
            f"rejects and output are the same file ({output}); give them different paths"
        )
    scored_schema, rejects_schema = schemas
    text = [f.name for f in scored_schema if pa.types.is_large_string(f.type)]
    top, sample = TopImages(TOP_K), ScoreSample(SCORE_SAMPLE_SIZE)
    n_scored = n_rejected = n_flagged = 0
    sinks: list[ParquetSink] = []
    try:
        sinks.append(ParquetSink(rejects, rejects_schema, "rejects"))
        sinks.append(ParquetSink(output, scored_schema, "scored", use_dictionary=text))
        with progress_bar(progress) as bar:
            task = bar.add_task("score", total=n_rows)
            # One chunk decoded ahead: decoding overlaps the forward pass (both release the GIL).
            for chunk in prefetch(chunks, depth=1):
                batch = score_images(detector, chunk, model_name, model_version, n_top=TOP_K)
                assert batch.images is not None  # score_images always reviews
                scored = batch.scored
                if heatmaps is not None:
                    scored = scored.assign(heatmap=heatmaps.write(batch, chunk.key_columns))
                source = _source_of(chunk)
                sinks[0].write(_arrow(batch.rejected, rejects_schema, source))
                sinks[1].write(_arrow(scored, scored_schema, source))
                top.add(batch.images, n_scored)
                sample.add(batch.scores)
                n_scored += batch.n_scored
                n_rejected += batch.n_rejected
                n_flagged += batch.n_flagged
                bar.advance(task, len(chunk))
        if n_scored + n_rejected != n_rows:  # pragma: no cover - an invariant, not a branch
            raise AssertionError(f"images in {n_rows} != scored {n_scored} + rejected {n_rejected}")
        # The scored output lands last: once it exists, its rejects file is complete beside it.
        rejects_path = sinks[0].commit()
        output_path = sinks[1].commit()
    except BaseException:
        for sink in sinks:
            sink.abort()
        raise
    return StreamResult(
        n_rows=n_rows,
        n_scored=n_scored,
        n_rejected=n_rejected,
        n_flagged=n_flagged,
        scores=sample.values(),
        output=output_path,
        rejects=rejects_path,
        images=top.review(),
    )


def _source_of(chunk: ImageBatch) -> str:
    """The file a chunk came from (a chunk of Parquet rows never spans two files)."""
    for frame in (chunk.index, chunk.rejected):
        if len(frame):
            return str(frame["source_file"].iloc[0])
    return ""


def _arrow(frame: pd.DataFrame, schema: pa.Schema, source: str) -> pa.Table:
    """``frame`` converted as the in-memory path writes it, then held to ``schema``."""
    return conform(pa.Table.from_pandas(frame, preserve_index=False), schema, source)
