"""The train and score recipes as plain functions: what the CLI runs and the flows split into tasks."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from anomaly.config import TrainSettings
from anomaly.data.images import (
    IMAGE_SUFFIXES,
    ImageBatch,
    probe_image_size,
    read_images,
    write_png_atomic,
)
from anomaly.data.parquet import (
    list_parquet_files,
    output_lock,
    read_table,
    write_parquet_atomic,
)
from anomaly.data.paths import (
    PARQUET_SUFFIXES,
    Skipped,
    check_output_paths,
    list_inputs,
    mark_output_folder,
)
from anomaly.data.schema import OUTPUT_COLUMNS
from anomaly.data.series import list_series_files, read_series, read_series_file, update_context
from anomaly.detectors import AutoencoderDetector
from anomaly.errors import DataFileError, NotLoggedError, SchemaError
from anomaly.events import EventSettings, EventTracker, scored_events
from anomaly.models import IMAGE_MODELS
from anomaly.monitoring import GateResult
from anomaly.plots import heatmap_rgb
from anomaly.quarantine import QuarantinedFile, quarantine_path_for, write_quarantine
from anomaly.run_logging import LOG_ATTEMPTS, log_scored, unlogged_record_path
from anomaly.scoring import BatchSummary, ScoredBatch, score_frame, score_images
from anomaly.streaming import StreamResult, score_parquet
from anomaly.tracking import (
    LoadedModel,
    RegisteredModel,
    TrackingConfig,
    load_registered_detector,
    log_training_run,
)

logger = logging.getLogger(__name__)


def read_training_data(data: str, settings: TrainSettings) -> pd.DataFrame | ImageBatch:
    """Normal data for ``settings``: Parquet tables, Parquet/CSV series when a window is set, or
    decoded images for an image model (at ``image_size``, or the first readable image's size).
    """
    options = settings.detector
    if options.model in IMAGE_MODELS:
        size = options.image_size or probe_image_size(data, options.image_column)
        return read_images(data, size, options.channels, options.image_column, options.key_columns)
    return read_series(data) if options.window is not None else read_table(data)


def fit_detector(frame: pd.DataFrame | ImageBatch, settings: TrainSettings) -> AutoencoderDetector:
    """Build the detector the settings describe and fit it on ``frame`` (normal rows or images)."""
    detector = settings.build_detector()
    images = isinstance(frame, ImageBatch)
    if images:
        if len(frame.rejected):
            logger.warning(
                "fit: leaving out %d of %d images that cannot be decoded (first: %s)",
                len(frame.rejected),
                len(frame),
                frame.rejected.iloc[0].to_dict(),
            )
        detector.set_params(image_size=tuple(frame.images.shape[2:]))
    detector.fit(
        frame.images if images else frame,
        quantile=settings.quantile,
        validation_fraction=settings.validation_fraction,
        calibration_fraction=settings.calibration_fraction,
    )
    if images:
        detector.fit_info_ |= {"n_rows": len(frame), "n_rejected": len(frame.rejected)}
    return detector


@dataclass(frozen=True)
class TrainResult:
    model: RegisteredModel
    threshold: float
    n_rows: int
    n_calibration: int
    epochs_run: int
    best_val_loss: float | None
    gate: GateResult | None = None


def train(
    data: str,
    settings: TrainSettings,
    tracking: TrackingConfig,
    run_name: str | None = None,
    holdout: str | None = None,
    labelled: str | None = None,
) -> TrainResult:
    """Read normal data, fit, calibrate, log to MLflow, register a new version and gate it.

    The gate checks the threshold on normal rows the model never saw: ``holdout`` (Parquet) when
    given, else ``settings.gate.holdout_fraction`` of ``data`` set aside before fitting; with
    ``labelled`` data (a label column, see :class:`GateSettings`) also an AUROC floor. Only a
    version that passes becomes ``models:/NAME@champion``.
    """
    from anomaly.registry import gate_and_promote, split_holdout

    frame = read_training_data(data, settings)
    if holdout is not None:
        fit_frame, holdout_frame = frame, read_training_data(holdout, settings)
    else:
        fit_frame, holdout_frame = split_holdout(
            frame, settings.gate.holdout_fraction, contiguous=settings.detector.window is not None
        )
    detector = fit_detector(fit_frame, settings)
    registered = log_training_run(detector, fit_frame, data, tracking, run_name=run_name)
    gate = gate_and_promote(
        registered,
        detector,
        holdout_frame,
        tracking,
        settings.gate,
        read_table(labelled) if labelled else None,
    )
    history = detector.history_
    return TrainResult(
        model=registered,
        threshold=detector.threshold_,
        n_rows=len(frame),
        n_calibration=int(detector.fit_info_["n_calibration"]),
        epochs_run=len(history.train_loss),
        best_val_loss=min(history.val_loss) if history.val_loss else None,
        gate=gate,
    )


def context_path_for(output: str | os.PathLike[str], model_name: str) -> Path:
    """Default context file of a time-series model, beside the output: ``NAME.context.parquet``."""
    return Path(output).with_name(f"{model_name}.context.parquet")


# Footer key of the context file holding the event tracker's state: the two move together.
EVENT_STATE_KEY = "anomaly.events"


def events_path_for(output: str | os.PathLike[str]) -> Path:
    """Events of a time-series run, beside the output: ``scores.parquet`` -> ``scores.events.parquet``."""
    out = Path(output)
    return out.with_name(f"{out.stem}.events.parquet")


@dataclass(frozen=True)
class SeriesStreamResult(StreamResult):
    """A time-series run's :class:`StreamResult` plus its events file and counts.

    ``n_events`` counts events that closed in this run (summed over runs, each event once),
    ``n_open_events`` those still open at its end (listed with ``open`` set, closed later).
    """

    events: Path | None = None
    n_events: int = 0
    n_open_events: int = 0


def _event_state(context_path: str | os.PathLike[str] | None) -> str | None:
    if context_path is None or not Path(context_path).exists():
        return None
    raw = (pq.read_schema(context_path).metadata or {}).get(EVENT_STATE_KEY.encode())
    return None if raw is None else raw.decode()


def _series_events(
    batch: ScoredBatch,
    detector: AutoencoderDetector,
    context_path: str | os.PathLike[str] | None,
    settings: EventSettings | None,
) -> tuple[pd.DataFrame, EventTracker]:
    policy = detector.series_policy_
    names = tuple(detector.schema_.feature_names)
    errors = batch.feature_errors
    if errors is None:  # every file quarantined: no scored rows
        errors = np.zeros((batch.n_scored, len(names)))
    return scored_events(
        batch.scored,
        errors,
        names,
        policy.time_column,
        policy.series_column,
        settings,
        _event_state(context_path),
    )


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
    So is an image batch (decoded images are the unit, not Parquet record batches); with
    ``heatmaps`` its flagged images' error maps are written as PNG beside the output.
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
    if detector.window is not None or detector.model in IMAGE_MODELS:
        context = None
        if detector.window is not None:
            batch, context = _score_series(model, data, context_path)
        else:
            batch = score_files(model, data)
        out, rej = write_outputs(batch, output, rejects_path, heatmaps=heatmaps)
        quarantine = write_quarantine(batch.quarantined, quarantine_path_for(output))
        result = StreamResult.of_batch(batch, out, rej, quarantine)
        if detector.window is None:
            return result
        events, tracker = _series_events(batch, detector, context_path, event_settings)
        events_file = write_parquet_atomic(events, events_path_for(output), role="events")
        # The context (with the open events) moves on only once the outputs are in place: a
        # run killed before this leaves it as it was, so the rerun scores the same rows the
        # same way and finds the same events.
        if context_path is not None and context is not None:
            write_parquet_atomic(
                context,
                context_path,
                role="context",
                metadata={EVENT_STATE_KEY: tracker.to_json()},
            )
        return SeriesStreamResult(
            **{f.name: getattr(result, f.name) for f in fields(StreamResult)},
            events=events_file,
            n_events=tracker.n_closed,
            n_open_events=tracker.n_open,
        )
    args = (model.detector, data, output, rejects_path, model.name, model.version)
    if dask or dask_address:
        from anomaly.distributed import score_parquet_dask

        return score_parquet_dask(*args, address=dask_address)
    return score_parquet(*args)


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
            frame = read_series_file(path)
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
    """Write the error map of every flagged image as a PNG heat map; return the paths by scored row.

    All maps share one colour scale (the largest error among them), so they compare directly.
    Files are named by the image's row in the scored output (``000042.png``).
    """
    paths = pd.Series(pd.NA, index=batch.scored.index, dtype="string")
    review = batch.images
    if review is None or not len(review.flagged_rows):
        return paths
    mark_output_folder(directory)
    vmax = float(np.max(review.flagged_error_maps))
    for row, error_map in zip(review.flagged_rows, review.flagged_error_maps, strict=True):
        path = write_png_atomic(heatmap_rgb(error_map, vmax), Path(directory) / f"{row:06d}.png")
        paths.iloc[row] = str(path)
    return paths


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


@dataclass(frozen=True)
class ScoreResult:
    """What a scoring run did, for summaries: counts, paths and the model used."""

    model_name: str
    model_version: str
    threshold: float
    rows_in: int
    rows_scored: int
    rows_rejected: int
    rows_flagged: int
    output: str
    rejects: str
    run_id: str
    # Files set aside whole, ``(file, reason)``; their rows (where known) are in rows_quarantined.
    quarantined: tuple[tuple[str, str], ...] = ()
    rows_quarantined: int = 0
    quarantine: str | None = None
    # Entries of the input directory or glob that were not read, ``(path, reason)``.
    skipped: tuple[tuple[str, str], ...] = ()
    # Time series: events closed in this run, and those still open at its end.
    n_events: int = 0
    n_open_events: int = 0

    @property
    def partial(self) -> bool:
        """Some input files were quarantined."""
        return bool(self.quarantined)

    @classmethod
    def of(
        cls,
        batch: BatchSummary,
        model: LoadedModel,
        output: str | os.PathLike[str],
        rejects: str | os.PathLike[str],
        run_id: str,
        quarantine: str | os.PathLike[str] | None = None,
        skipped: Sequence[Skipped] = (),
    ) -> ScoreResult:
        return cls(
            model_name=model.name,
            model_version=model.version,
            threshold=model.detector.threshold_,
            rows_in=batch.n_rows + batch.n_quarantined_rows,
            rows_scored=batch.n_scored,
            rows_rejected=batch.n_rejected,
            rows_flagged=batch.n_flagged,
            output=str(output),
            rejects=str(rejects),
            run_id=run_id,
            quarantined=tuple((f.source_file, f.reason) for f in batch.quarantined),
            rows_quarantined=batch.n_quarantined_rows,
            quarantine=None if quarantine is None else str(quarantine),
            skipped=tuple((str(s.path), s.reason) for s in skipped),
            n_events=getattr(batch, "n_events", 0),
            n_open_events=getattr(batch, "n_open_events", 0),
        )


def score(
    data: str,
    model_uri: str,
    output: str,
    tracking: TrackingConfig,
    rejects: str | None = None,
    device: str = "auto",
    context: str | None = None,
    dask: bool = False,
    dask_address: str | None = None,
    heatmaps: bool = False,
    log_attempts: int = LOG_ATTEMPTS,
) -> ScoreResult:
    """Score new data with a registered model, write outputs and log the scoring run.

    ``context``: for a time-series model, the file carrying points from batch to batch
    (default :func:`context_path_for` the output). ``heatmaps``: for image models, also write
    the flagged images' error maps as PNG heat maps. Logging is tried ``log_attempts`` times.

    Raises
    ------
    NotLoggedError
        When the outputs are complete but the tracking store kept refusing the run; its
        ``result`` is this run's summary and its ``record`` what ``anomaly log-run`` logs later.
    """
    check_output_path(output)
    model = load_registered_detector(model_uri, tracking, device=device)
    skipped = skipped_inputs(data, model.detector)
    result = score_files_to(
        model,
        data,
        output,
        rejects,
        dask=dask,
        dask_address=dask_address,
        context_path=context or context_path_for(output, model.name),
        heatmaps=heatmaps,
    )
    out, rej = result.output, result.rejects
    listed = [(str(s.path), s.reason) for s in skipped]
    try:
        run_id = log_scored(
            result, model, data, str(out), str(rej), tracking, log_attempts, skipped=listed
        )
    except NotLoggedError as exc:
        exc.result = ScoreResult.of(result, model, out, rej, "", result.quarantine, skipped)
        raise
    return ScoreResult.of(result, model, out, rej, run_id, result.quarantine, skipped)


def skipped_inputs(data: str, detector: AutoencoderDetector) -> tuple[Skipped, ...]:
    """The entries of ``data`` (a directory or glob) the detector's kind of input does not read."""
    if detector.model in IMAGE_MODELS:
        suffixes: tuple[str, ...] = (*IMAGE_SUFFIXES, *PARQUET_SUFFIXES)
    elif detector.window is not None:
        suffixes = (*PARQUET_SUFFIXES, ".csv")
    else:
        suffixes = PARQUET_SUFFIXES
    try:
        return list_inputs(data, suffixes).skipped
    except DataFileError:
        return ()  # the scoring itself names what is wrong with ``data``
