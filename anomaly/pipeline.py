"""The train and score recipes as plain functions: what the CLI runs and the flows split into tasks."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from anomaly.config import TrainSettings
from anomaly.data.images import (
    IMAGE_SUFFIXES,
    ImageBatch,
    probe_image_size,
    read_images,
)
from anomaly.data.parquet import (
    read_table,
)
from anomaly.data.paths import (
    PARQUET_SUFFIXES,
    list_inputs,
)
from anomaly.data.series import read_series
from anomaly.data.splits import split_holdout
from anomaly.detectors import AutoencoderDetector
from anomaly.errors import DataFileError, NotLoggedError

# Re-exported: the file-scoring path lived here; the flows and users import it from here.
from anomaly.file_scoring import EVENT_STATE_KEY as EVENT_STATE_KEY
from anomaly.file_scoring import SeriesStreamResult as SeriesStreamResult
from anomaly.file_scoring import check_output_path as check_output_path
from anomaly.file_scoring import context_path_for as context_path_for
from anomaly.file_scoring import events_path_for as events_path_for
from anomaly.file_scoring import heatmaps_dir_for as heatmaps_dir_for
from anomaly.file_scoring import rejects_path_for as rejects_path_for
from anomaly.file_scoring import score_files as score_files
from anomaly.file_scoring import score_files_to as score_files_to
from anomaly.file_scoring import score_series_files as score_series_files
from anomaly.file_scoring import write_heatmaps as write_heatmaps
from anomaly.file_scoring import write_outputs as write_outputs
from anomaly.models import IMAGE_MODELS
from anomaly.run_logging import LOG_ATTEMPTS, log_scored
from anomaly.scoring import BatchSummary
from anomaly.tracking import (
    LoadedModel,
    RegisteredModel,
    TrackingConfig,
    load_registered_detector,
    log_training_run,
)

if TYPE_CHECKING:
    from anomaly.monitoring import GateResult

logger = logging.getLogger(__name__)


def read_training_data(data: str, settings: TrainSettings) -> pd.DataFrame | ImageBatch:
    """Normal data for ``settings``: Parquet tables, Parquet/CSV series when a window is set, or
    decoded images for an image model (at ``image_size``, or the first readable image's size).
    """
    options = settings.detector
    if options.model in IMAGE_MODELS:
        size = options.image_size or probe_image_size(data, options.image_column)
        return read_images(data, size, options.channels, options.image_column, options.key_columns)
    if options.window is not None:
        return read_series(data, options.time_column)
    return read_table(data)


@dataclass(frozen=True)
class TrainingData:
    """Normal data read for training: all of it, the part to fit on, the gate's hold-out."""

    frame: pd.DataFrame | ImageBatch
    fit: pd.DataFrame | ImageBatch
    holdout: pd.DataFrame | ImageBatch
    labelled: pd.DataFrame | None = None


def prepare_training_data(
    data: str,
    settings: TrainSettings,
    holdout: str | None = None,
    labelled: str | None = None,
) -> TrainingData:
    """Read ``data`` and set the gate's hold-out apart: ``holdout`` when given, else
    ``settings.gate.holdout_fraction`` of ``data`` (the last rows for time series, so both parts
    stay unbroken series; a random share otherwise). ``labelled`` is read as a table.
    """
    frame = read_training_data(data, settings)
    if holdout is not None:
        fit_frame, holdout_frame = frame, read_training_data(holdout, settings)
    else:
        fit_frame, holdout_frame = split_holdout(
            frame, settings.gate.holdout_fraction, contiguous=settings.detector.window is not None
        )
    return TrainingData(frame, fit_frame, holdout_frame, read_table(labelled) if labelled else None)


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
    version that passes becomes ``models:/NAME@champion``; one whose hold-out is too small to
    tell is "inconclusive" and promoted only as the name's first version or with
    ``settings.gate.allow_inconclusive`` (:func:`anomaly.registry.gate_and_promote`).
    """
    # The gate (and its statistics) only when training: scoring does not pay for its imports.
    from anomaly.registry import gate_and_promote

    prepared = prepare_training_data(data, settings, holdout, labelled)
    detector = fit_detector(prepared.fit, settings)
    registered = log_training_run(
        detector,
        prepared.fit,
        data,
        tracking,
        run_name=run_name,
        settings=settings.model_dump(mode="json"),
    )
    gate = gate_and_promote(
        registered, detector, prepared.holdout, tracking, settings.gate, prepared.labelled
    )
    history = detector.history_
    return TrainResult(
        model=registered,
        threshold=detector.threshold_,
        n_rows=len(prepared.frame),
        n_calibration=int(detector.fit_info_["n_calibration"]),
        epochs_run=len(history.train_loss),
        best_val_loss=min(history.val_loss) if history.val_loss else None,
        gate=gate,
    )


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
        skipped: Sequence[tuple[str, str]] = (),
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
            skipped=tuple(skipped),
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
    try:
        run_id = log_scored(
            result, model, data, str(out), str(rej), tracking, log_attempts, skipped=skipped
        )
    except NotLoggedError as exc:
        exc.result = ScoreResult.of(result, model, out, rej, "", result.quarantine, skipped)
        raise
    return ScoreResult.of(result, model, out, rej, run_id, result.quarantine, skipped)


def skipped_inputs(data: str, detector: AutoencoderDetector) -> tuple[tuple[str, str], ...]:
    """``(path, reason)`` of each entry of ``data`` (a directory or glob) the detector's kind of
    input does not read."""
    if detector.model in IMAGE_MODELS:
        suffixes: tuple[str, ...] = (*IMAGE_SUFFIXES, *PARQUET_SUFFIXES)
    elif detector.window is not None:
        suffixes = (*PARQUET_SUFFIXES, ".csv")
    else:
        suffixes = PARQUET_SUFFIXES
    try:
        return tuple((str(s.path), s.reason) for s in list_inputs(data, suffixes).skipped)
    except DataFileError:
        return ()  # the scoring itself names what is wrong with ``data``
