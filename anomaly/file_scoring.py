"""Scoring files into output files: tables streamed by record batch, series in order with their
context and events, images decoded; the outputs are checked against the inputs before anything is
written, and land atomically (temporaries, then rename)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.data.images import read_images
from anomaly.data.parquet import (
    list_parquet_files,
    output_lock,
    read_table,
    write_parquet_atomic,
)
from anomaly.data.paths import (
    check_output_paths,
)
from anomaly.data.schema import OUTPUT_COLUMNS
from anomaly.data.series import list_series_files, read_series_file, update_context
from anomaly.detectors import AutoencoderDetector
from anomaly.errors import DataFileError, SchemaError
from anomaly.events import EventSettings
from anomaly.heatmaps import HeatmapWriter
from anomaly.models import IMAGE_MODELS
from anomaly.quarantine import QuarantinedFile, quarantine_path_for
from anomaly.run_logging import unlogged_record_path
from anomaly.scoring import ScoredBatch, score_frame, score_images
from anomaly.stream_images import score_image_files
from anomaly.stream_series import (
    EVENT_STATE_KEY,
    SeriesStreamResult,
    event_state,
    events_path_for,
    score_series_stream,
)
from anomaly.streaming import StreamResult, score_parquet
from anomaly.tracking import (
    LoadedModel,
)

logger = logging.getLogger(__name__)


def context_path_for(output: str | os.PathLike[str], model_name: str) -> Path:
    """Default context file of a time-series model, beside the output: ``NAME.context.parquet``."""
    return Path(output).with_name(f"{model_name}.context.parquet")


def score_files_to(
    model: LoadedModel,
    data: str,
    output: str | os.PathLike[str],
    rejects: str | os.PathLike[str] | None = None,
    dask: bool = False,
    dask_address: str | None = None,
    context_path: str | os.PathLike[str] | None = None,
    heatmaps: bool = False,
    event_settings: EventSettings | None = None,
) -> StreamResult:
    """Score every Parquet file of ``data`` straight into the output files, in bounded memory.

    Streams record batches in this process, or, with ``dask`` or a ``dask_address``, spreads
    row groups over a Dask cluster (a local one unless an address is given). Either way the
    same rows and scores land in ``output`` and ``rejects`` (default beside ``output``), and
    files that cannot be scored at all are listed with the reason in
    :func:`~anomaly.quarantine.quarantine_path_for` the output. A time-series model carries
    points across rows and files, so its data is scored in order in memory
    (:func:`score_series_files`, continuing from ``context_path``) and then written.
    Images stream a chunk of decoded images at a time
    (:func:`anomaly.stream_images.score_image_files`); with ``heatmaps`` each flagged image's
    heat map is written as PNG beside the output (:mod:`anomaly.heatmaps`).
    A time-series run also writes its anomaly events (:mod:`anomaly.events`, grouped by
    ``event_settings``) to :func:`events_path_for` the output, carrying open events to the next
    run in ``context_path``, and returns a :class:`SeriesStreamResult`.
    """
    rejects_path = Path(rejects) if rejects is not None else rejects_path_for(output)
    events_path = events_path_for(output) if model.detector.window is not None else None
    check_output_paths(
        data,
        {
            "output": output,
            "rejects": rejects_path,
            "quarantine list": quarantine_path_for(output),
            "context": context_path,
            "unlogged-run record": unlogged_record_path(output),
            "events": events_path,
        },
        {"heat-map": heatmaps_dir_for(output) if heatmaps else None},
    )
    # One run at a time per output; temporaries of a killed earlier run go before this one writes.
    with output_lock(output, rejects_path, quarantine_path_for(output), context_path, events_path):
        return _score_files_to(
            model,
            data,
            output,
            rejects_path,
            dask,
            dask_address,
            context_path,
            heatmaps,
            event_settings,
        )


def _score_files_to(
    model: LoadedModel,
    data: str,
    output: str | os.PathLike[str],
    rejects_path: Path,
    dask: bool,
    dask_address: str | None,
    context_path: str | os.PathLike[str] | None,
    heatmaps: bool,
    event_settings: EventSettings | None = None,
) -> StreamResult:
    detector = model.detector
    if detector.model in IMAGE_MODELS:
        return score_image_files(
            detector,
            data,
            output,
            rejects_path,
            model.name,
            model.version,
            heatmaps=heatmaps_dir_for(output) if heatmaps else None,
        )
    if detector.window is not None:
        return _stream_series(model, data, output, rejects_path, context_path, event_settings)
    args = (model.detector, data, output, rejects_path, model.name, model.version)
    if dask or dask_address:
        from anomaly.distributed import score_parquet_dask

        return score_parquet_dask(*args, address=dask_address)
    return score_parquet(*args)


def _stream_series(
    model: LoadedModel,
    data: str,
    output: str | os.PathLike[str],
    rejects_path: Path,
    context_path: str | os.PathLike[str] | None,
    event_settings: EventSettings | None,
) -> SeriesStreamResult:
    context = None
    if context_path is not None and Path(context_path).exists():
        context = read_table(context_path)
        logger.info("continuing from %d context points in %s", len(context), context_path)
    result, context, tracker = score_series_stream(
        model.detector,
        data,
        Path(output),
        rejects_path,
        quarantine_path_for(output),
        context,
        event_state(context_path),
        model.name,
        model.version,
        event_settings,
    )
    # The context (with the open events) moves on only once the outputs are in place: a run
    # killed before this leaves it as it was, so the rerun scores the same rows the same way and
    # finds the same events.
    if context_path is not None and context is not None:
        write_parquet_atomic(
            context, context_path, role="context", metadata={EVENT_STATE_KEY: tracker.to_json()}
        )
    return result


def score_files(
    model: LoadedModel, data: str, context_path: str | os.PathLike[str] | None = None
) -> ScoredBatch:
    """Score every Parquet file of ``data`` (file, directory or glob) file by file.

    Rejected rows carry the file they came from. A file that cannot be read, or lacks a column
    the model needs, is quarantined (``ScoredBatch.quarantined``, with the reason) and the
    other files are scored. For a
    time-series model see :func:`score_series_files`. For an image model ``data`` is an image
    folder, image file, Parquet files with an image-bytes column, or a glob. For data larger than
    memory use
    :func:`score_files_to`, which writes as it goes.
    """
    if model.detector.window is not None:
        return score_series_files(model, data, context_path)
    detector = model.detector
    if detector.model in IMAGE_MODELS:
        channels, height, width = detector.image_shape_
        images = read_images(
            data,
            (height, width),
            channels,
            detector.image_column,
            detector.key_columns,
        )
        batch = score_images(detector, images, model.name, model.version)
        logger.info(
            "%s: %d scored, %d rejected, %d flagged",
            data,
            batch.n_scored,
            batch.n_rejected,
            batch.n_flagged,
        )
        return batch
    batches, quarantined = [], []
    for path in list_parquet_files(data):
        frame = None
        try:
            frame = read_table(path)
            batch = score_frame(model.detector, frame, model.name, model.version, source=str(path))
        except (DataFileError, SchemaError) as exc:
            rows = None if frame is None else len(frame)
            quarantined.append(QuarantinedFile.of(path, exc, rows))
            continue
        _log_file(path, batch)
        batches.append(batch)
    return _combine(batches, quarantined, model.detector)


def _log_file(path: Path, batch: ScoredBatch) -> None:
    logger.info(
        "%s: %d scored, %d rejected, %d flagged",
        path,
        batch.n_scored,
        batch.n_rejected,
        batch.n_flagged,
    )


def _combine(
    batches: list[ScoredBatch],
    quarantined: list[QuarantinedFile],
    detector: AutoencoderDetector,
) -> ScoredBatch:
    """One batch from per-file batches: rows concatenated in file order, series counts summed."""
    if not batches:  # every file quarantined
        keys = list(detector.schema_.keys)
        return ScoredBatch(
            scored=pd.DataFrame(columns=[*keys, *OUTPUT_COLUMNS]),
            rejected=pd.DataFrame(columns=["reason", "source_row", "source_file"]),
            quarantined=tuple(quarantined),
        )
    rejected = [b.rejected for b in batches]
    counts: dict[str, int] = {}
    for batch in batches:
        for key, value in batch.series_counts.items():
            counts[key] = counts.get(key, 0) + value
    errors = [b.feature_errors for b in batches]
    return ScoredBatch(
        feature_errors=None if any(e is None for e in errors) else np.concatenate(errors),  # type: ignore[arg-type]
        scored=pd.concat([b.scored for b in batches], ignore_index=True),
        # Concatenating only empty frames would lose their columns' dtypes.
        rejected=pd.concat(rejected, ignore_index=True)
        if any(len(r) for r in rejected)
        else rejected[0],
        series_counts=counts,
        quarantined=tuple(quarantined),
    )


def score_series_files(
    model: LoadedModel, data: str, context_path: str | os.PathLike[str] | None = None
) -> ScoredBatch:
    """Score series files (Parquet or CSV; in name order) each continuing from the one before.

    ``context_path`` is a small Parquet file with the last ``window - 1`` points of every series
    seen so far: read before the first file when it exists, written (atomically) after the
    last. Without it, the first rows of each run are scored without earlier points. No events
    are found here (see :func:`score_files_to`), and the context written drops any open
    events it held: their counts of quiet points would be stale after these rows.
    """
    batch, context = _score_series(model, data, context_path)
    if context_path is not None and context is not None:
        write_parquet_atomic(context, context_path, role="context")
    return batch


def _score_series(
    model: LoadedModel, data: str, context_path: str | os.PathLike[str] | None
) -> tuple[ScoredBatch, pd.DataFrame | None]:
    """The scored series files and the context after the last, which is not written here."""
    detector = model.detector
    context = None
    if context_path is not None and Path(context_path).exists():
        context = read_table(context_path)
        logger.info("continuing from %d context points in %s", len(context), context_path)
    batches, quarantined = [], []
    for path in list_series_files(data):
        frame = None
        try:
            frame = read_series_file(path, detector.time_column)
            batch = score_frame(
                detector, frame, model.name, model.version, source=str(path), context=context
            )
        except (DataFileError, SchemaError) as exc:
            # The next file continues from the last good one's points.
            rows = None if frame is None else len(frame)
            quarantined.append(QuarantinedFile.of(path, exc, rows))
            continue
        context = update_context(
            context, detector.next_context(frame, context), detector.series_policy_
        )
        _log_file(path, batch)
        batches.append(batch)
    return _combine(batches, quarantined, detector), context


def rejects_path_for(output: str | os.PathLike[str]) -> Path:
    """Default rejects file beside the output: ``scores.parquet`` -> ``scores.rejects.parquet``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.rejects.parquet")


def check_output_path(output: str | os.PathLike[str]) -> Path:
    """Refuse an output path that cannot take a file, before any scoring work is done."""
    path = Path(output)
    if path.is_dir() or str(output).endswith(("/", os.sep)):
        raise ValueError(
            f"output {output} is a directory; give a file path such as {path / 'scores.parquet'}"
        )
    return path


def heatmaps_dir_for(output: str | os.PathLike[str]) -> Path:
    """Heat maps beside the output: ``scores.parquet`` -> ``scores.heatmaps/``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.heatmaps")


def write_heatmaps(batch: ScoredBatch, directory: str | os.PathLike[str]) -> pd.Series:
    """Write the heat map of every flagged image as PNG; return the paths by scored row.

    As a streamed run writes them (:mod:`anomaly.heatmaps`): the image in grey under its error
    map, on the model's fixed colour scale, named by the image's key.
    """
    review = batch.images
    if review is None or not len(review.flagged_rows):
        return pd.Series(pd.NA, index=batch.scored.index, dtype="string")
    scored = batch.scored
    keys = list(scored.columns[: scored.columns.get_loc("anomaly_score")])
    writer = HeatmapWriter(directory, float(scored["threshold"].iloc[0]))
    return writer.write(batch, keys)


def write_outputs(
    batch: ScoredBatch,
    output: str | os.PathLike[str],
    rejects: str | os.PathLike[str] | None = None,
    heatmaps: bool = False,
) -> tuple[Path, Path]:
    """Write scored rows and rejected rows atomically; the rejects file is written even when empty.

    With ``heatmaps`` (image batches), the flagged images' error maps go to PNG files in
    :func:`heatmaps_dir_for` and the scored output gets their paths in a ``heatmap`` column.
    """
    rejects_path = Path(rejects) if rejects is not None else rejects_path_for(output)
    if rejects_path.resolve() == Path(output).resolve():
        raise ValueError(
            f"rejects and output are the same file ({output}); give them different paths"
        )
    scored = batch.scored
    if heatmaps and batch.images is not None:
        scored = scored.assign(heatmap=write_heatmaps(batch, heatmaps_dir_for(output)))
    # The scored output lands last: once it exists, its rejects file is complete beside it.
    rej = write_parquet_atomic(batch.rejected, rejects_path, role="rejects")
    return write_parquet_atomic(scored, output, role="scored"), rej
