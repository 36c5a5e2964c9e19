"""The training run: parameters, metrics, reviews and the registered model version."""

from __future__ import annotations

import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import from_pandas
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from anomaly import plots
from anomaly.data.schema import invalid_row_reasons
from anomaly.errors import InvalidRowsError
from anomaly.integrity import MANIFEST_TAG, manifest_digest
from anomaly.models import data_kind
from anomaly.scoring import score_frame
from anomaly.tracking.descriptions import describe_version
from anomaly.tracking.store import (
    CALIBRATION_LEVELS,
    KEY_TAG,
    TRAIN_SETTINGS_ARTIFACT,
    RegisteredModel,
    TrackingConfig,
    configure,
    finished_run,
    frame_digest,
    hash_key,
    log_figure,
)

if TYPE_CHECKING:
    from anomaly.data.images import ImageBatch
    from anomaly.detectors import AutoencoderDetector

logger = logging.getLogger(__name__)

PYFUNC_ENTRY = Path(__file__).parent.parent / "mlflow_model.py"


def _flat_params(detector: AutoencoderDetector) -> dict[str, str]:
    return {
        k: ("" if v is None else str(list(v) if isinstance(v, tuple) else v))
        for k, v in detector.get_params().items()
    }


def log_training_run(
    detector: AutoencoderDetector,
    training_frame: pd.DataFrame | ImageBatch,
    data_source: str,
    config: TrackingConfig,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    settings: dict[str, Any] | None = None,
) -> RegisteredModel:
    """Log a fitted detector's run and register it as a new model version.

    ``settings``: the training settings as JSON-able data, kept as ``train_settings.json`` so a
    retrain can make the same kind of model (:func:`recorded_train_settings`).

    Logs every hyperparameter, the data split, per-epoch losses, the threshold and calibration
    error quantiles, the training data as a dataset input, review plots, a threshold review
    (quantile table, latent view, summary), and the model as a pyfunc (preprocessor + network +
    threshold) with signature and input example. The version is tagged with the data source and
    digest, threshold (value, kind, quantile), calibration size, data kind and validation loss, and
    described in Markdown from those tags (:mod:`~anomaly.tracking.descriptions`).

    With ``idempotency_key``, a repeated call (a retried task) whose first attempt finished
    returns the version that attempt registered instead of registering another.

    For an image detector ``training_frame`` is the :class:`~anomaly.data.images.ImageBatch` it
    was fitted on; the review plots are a grid of calibration images, reconstructions and
    error maps, and the pyfunc model scores a DataFrame with an image-bytes column.
    """
    from anomaly.data.images import ImageBatch

    images = training_frame if isinstance(training_frame, ImageBatch) else None
    if images is not None:
        training_frame = images.index
    detector._check_fitted()
    experiment_id = configure(config)
    client = MlflowClient()
    if (done := finished_run(experiment_id, idempotency_key)) is not None:
        versions = client.search_model_versions(
            f"name='{config.registered_model_name}' and run_id='{done}'"
        )
        if versions:
            version = str(versions[0].version)
            logger.info(
                "run %s already registered version %s; not registering again", done, version
            )
            return RegisteredModel(
                done,
                config.registered_model_name,
                version,
                f"models:/{config.registered_model_name}/{version}",
                mlflow.get_tracking_uri(),
            )
    thr = detector.thresholder_
    history = detector.history_
    run_tags = {"anomaly.run_type": "training", **(tags or {})}
    if idempotency_key:
        run_tags[KEY_TAG] = hash_key(idempotency_key)
    with mlflow.start_run(run_name=run_name, tags=run_tags) as run:
        mlflow.log_params(_flat_params(detector))
        if settings is not None:
            mlflow.log_dict(settings, TRAIN_SETTINGS_ARTIFACT)
        mlflow.log_params(
            {f"data.{k}": v for k, v in detector.fit_info_.items()} | {"data.source": data_source}
        )
        mlflow.log_params(
            {
                "features": ",".join(detector.schema_.feature_names)[:6000]
                if images is None
                else "x".join(map(str, detector.image_shape_)),
                "device_used": history.device,
            }
        )

        epochs = [
            mlflow.entities.Metric(name, float(value), 0, step)
            for name, values in (("train_loss", history.train_loss), ("val_loss", history.val_loss))
            for step, value in enumerate(values, start=1)
        ]
        for start in range(0, len(epochs), 1000):
            client.log_batch(run.info.run_id, metrics=epochs[start : start + 1000])
        quantiles = thr.quantiles(CALIBRATION_LEVELS)
        mlflow.log_metrics(
            {
                "threshold": detector.threshold_,
                "quantile": thr.q,
                "calibration_size": len(thr.calibration_scores_),
                "best_epoch": history.best_epoch,
                "epochs_run": len(history.train_loss),
                "train_seconds": history.seconds,
                "train_samples_per_second": history.samples_per_second,
                **({"best_val_loss": min(history.val_loss)} if history.val_loss else {}),
                **{
                    f"calibration_error_p{lv * 100:g}".replace(".", "_"): v
                    for lv, v in quantiles.items()
                },
            }
        )
        with warnings.catch_warnings():
            # mlflow hints that integer columns cannot hold NaN and that a local path could be
            # several source types; neither applies to a dataset record of the training file.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(
                training_frame, source=data_source, name=Path(data_source).name or "training"
            )
            mlflow.log_input(dataset, context="training")

        log_figure(
            plots.score_histogram(thr.calibration_scores_, detector.threshold_, thr.q),
            "plots/calibration_histogram.png",
        )
        log_figure(
            plots.loss_curves(history.train_loss, history.val_loss, history.best_epoch),
            "plots/loss_curves.png",
        )
        example: pd.DataFrame | None = None
        latent_view = _calibration_latent(detector, training_frame, images)
        if latent_view is not None:
            log_figure(
                plots.latent_pca(
                    latent_view.codes, latent_view.scores, detector.threshold_, latent_view.what
                ),
                "plots/latent_pca.png",
            )
        if images is not None:
            _log_image_review(detector, images.images)
        else:
            if detector.window is not None:
                per_feature, example = _review_series(detector, training_frame)
            else:
                per_feature, example = _review_table(detector, training_frame)
            log_figure(
                plots.feature_error_bars(list(per_feature.index), per_feature.to_numpy()),
                "plots/feature_errors.png",
            )
            mlflow.log_dict(per_feature.to_dict(), "feature_errors.json")
            _log_threshold_review(detector, data_source, latent_view)

        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "detector"
            detector.save(saved)
            digest = manifest_digest(saved)
            signature = None
            if example is not None:
                from anomaly.scoring import score_rows

                signature = infer_signature(
                    example, score_rows(detector, example).reset_index(drop=True)
                )
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_ENTRY),
                artifacts={"detector": str(saved)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                input_example=example,
                registered_model_name=config.registered_model_name,
                pip_requirements=requirements(),
            )
        version = str(info.registered_model_version)
        for key, value in {
            "threshold": f"{detector.threshold_:.6g}",
            "quantile": str(thr.q),
            "calibration_size": str(len(thr.calibration_scores_)),
            "data_source": data_source,
            "data_digest": frame_digest(training_frame),
            "validation_loss": f"{min(history.val_loss):.6g}" if history.val_loss else "",
            "run_id": run.info.run_id,
            "threshold_kind": str(thr.to_dict()["kind"]),
            "data_kind": data_kind(detector.model, detector.window),
            MANIFEST_TAG: digest,
        }.items():
            client.set_model_version_tag(config.registered_model_name, version, key, value)
        describe_version(client, config.registered_model_name, version)
        if run_name is None:  # MLflow's generated names say nothing and repeat across runs
            kind = data_kind(detector.model, detector.window)
            client.set_tag(
                run.info.run_id,
                "mlflow.runName",
                f"train {config.registered_model_name} v{version} ({kind})",
            )
    model_uri = f"models:/{config.registered_model_name}/{version}"
    logger.info("registered %s (run %s)", model_uri, run.info.run_id)
    return RegisteredModel(
        run.info.run_id, config.registered_model_name, version, model_uri, mlflow.get_tracking_uri()
    )


def _log_image_review(detector: AutoencoderDetector, images: np.ndarray, n: int = 8) -> None:
    """Grid of calibration images (never trained on), reconstructions and error maps."""
    split = getattr(detector, "split_index_", None)
    rows = np.asarray(split["calibration"]) if split is not None else np.arange(len(images))
    rows = rows[rows < len(images)][:n]
    sample = images[rows]
    scores = detector.score_samples(sample)
    log_figure(
        plots.image_grid(
            sample,
            detector.reconstruct(sample),
            detector.error_maps(sample),
            scores,
            title="Calibration images (score above), reconstructions, error maps",
        ),
        "plots/calibration_images.png",
    )


def _review_table(
    detector: AutoencoderDetector, training_frame: pd.DataFrame
) -> tuple[pd.Series, pd.DataFrame]:
    """Mean error per feature on calibration rows, and a pyfunc input example."""
    # Calibration rows are held out from training; after a reload the split is unknown and a
    # sample of the training data stands in.
    split = getattr(detector, "split_index_", None)
    review = (
        training_frame.loc[split["calibration"]]
        if split is not None and split["calibration"].isin(training_frame.index).all()
        else training_frame.sample(n=min(len(training_frame), 2000), random_state=0)
    )
    clean = review.loc[(invalid_row_reasons(review, detector.schema_) == "").to_numpy()]
    per_feature = detector.feature_errors(clean).mean(axis=0)
    example = clean[detector.schema_.feature_names].head(5).reset_index(drop=True)
    return per_feature, example


def _review_series(
    detector: AutoencoderDetector, training_frame: pd.DataFrame
) -> tuple[pd.Series, pd.DataFrame]:
    """Mean error per feature over the training series, its review plot, and an input example.

    The plot shows the first series (at most 20,000 points): each feature over time, the score,
    the threshold and flagged spans; the last part of each stretch is the calibration part.
    """
    # Through the scoring engine, which sets aside the rows that became no point (a gap, a
    # short stretch, a bad value); they stay NaN here.
    batch = score_frame(detector, training_frame)
    scores = np.full(len(training_frame), np.nan)
    scores[batch.scored["source_row"].to_numpy()] = batch.scored["anomaly_score"].to_numpy()
    names = detector.schema_.feature_names
    assert batch.feature_errors is not None  # a series batch always carries them
    per_feature = pd.Series(batch.feature_errors.mean(axis=0), index=names)
    policy = detector.series_policy_
    shown = training_frame
    if policy.series_column is not None:
        first = training_frame[policy.series_column].iloc[0]
        shown = training_frame.loc[training_frame[policy.series_column] == first]
    positions = training_frame.index.get_indexer(shown.index)
    if policy.time_column is not None:
        order = np.argsort(shown[policy.time_column].to_numpy(), kind="stable")
        times = shown[policy.time_column].to_numpy()[order]
    else:
        order = np.arange(len(shown))
        times = order
    keep = order[:20000]
    log_figure(
        plots.series_review(
            times[: len(keep)],
            shown[names].to_numpy(dtype=float)[keep],
            names,
            scores[positions[keep]],
            detector.threshold_,
            title="Training series (calibration = last part)",
        ),
        "plots/series_review.png",
    )
    columns = [*detector.schema_.keys, *names]
    clean = training_frame.loc[np.isfinite(scores), columns]
    example = clean.head(2 * int(detector.window)).reset_index(drop=True)  # type: ignore[arg-type]
    return per_feature, example


@dataclass(frozen=True)
class _LatentView:
    """Latent codes ``(n, d)`` and scores ``(n,)`` of a sample of calibration data."""

    codes: np.ndarray
    scores: np.ndarray
    what: str  # "calibration rows", "calibration windows", "calibration images"


LATENT_SAMPLE = 2000  # points in the latent view: enough to see the cloud, cheap to plot


def _calibration_latent(
    detector: AutoencoderDetector,
    training_frame: pd.DataFrame,
    images: ImageBatch | None,
) -> _LatentView | None:
    """Codes and scores of at most :data:`LATENT_SAMPLE` calibration samples, through the
    detector's public methods: rows of a table, windows of a series (each row's code is the
    window ending at it), images. After a reload the split is unknown and a sample of the
    training data stands in. ``None`` when fewer than 3 samples can be shown."""
    split = getattr(detector, "split_index_", None)
    rng = np.random.default_rng(0)

    def bounded(n: int) -> np.ndarray:
        return (
            np.sort(rng.choice(n, size=LATENT_SAMPLE, replace=False))
            if n > LATENT_SAMPLE
            else np.arange(n)
        )

    if images is not None:
        rows = (
            np.asarray(split["calibration"]) if split is not None else np.arange(len(images.images))
        )
        rows = rows[rows < len(images.images)]
        sample = images.images[rows[bounded(len(rows))]]
        codes, scores, what = (
            detector.latent(sample),
            detector.score_samples(sample),
            "calibration images",
        )
    elif detector.window is not None:
        calibration, before = _series_calibration_part(detector, training_frame)
        context = detector.next_context(before) if len(before) else None
        try:
            codes = detector.latent(calibration, context)
            scores = detector.score_samples(calibration, context)
        except InvalidRowsError as exc:  # e.g. a calibration stretch shorter than the window
            logger.warning("no latent view: %s", exc)
            return None
        scored = np.isfinite(scores) & np.isfinite(codes).all(axis=1)
        codes, scores = codes[scored], scores[scored]
        keep = bounded(len(scores))
        codes, scores, what = codes[keep], scores[keep], "calibration windows"
    else:
        review = (
            training_frame.loc[split["calibration"]]
            if split is not None and split["calibration"].isin(training_frame.index).all()
            else training_frame
        )
        clean = review.loc[(invalid_row_reasons(review, detector.schema_) == "").to_numpy()]
        sample = clean.iloc[bounded(len(clean))]
        codes, scores, what = (
            detector.latent(sample),
            detector.score_samples(sample),
            "calibration rows",
        )
    if len(scores) < 3:
        return None
    return _LatentView(np.asarray(codes), np.asarray(scores, dtype=np.float64), what)


def _series_calibration_part(
    detector: AutoencoderDetector, training_frame: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The valid rows of the training series split into the calibration part and the rows before.

    The calibration part is the last share of each series in time order, the share of points the
    fit calibrated on; the rows before give the windows their context, so each calibration row
    scores as it did in calibration.
    """
    split = getattr(detector, "split_index_", None)
    if split is not None:
        sizes = [len(split[part]) for part in ("fit", "validation", "calibration")]
    else:
        info = detector.fit_info_
        sizes = [int(info.get(k, 0)) for k in ("n_fit", "n_validation", "n_calibration")]
    share = sizes[2] / max(sum(sizes), 1)
    policy = detector.series_policy_
    valid = training_frame.loc[
        (invalid_row_reasons(training_frame, detector.schema_) == "").to_numpy()
    ]
    if policy.time_column is not None:
        valid = valid.sort_values(policy.time_column, kind="stable")
    if policy.series_column is not None:
        groups = valid.groupby(policy.series_column, sort=False)
        from_end = groups.cumcount(ascending=False).to_numpy()
        length = groups[policy.series_column].transform("size").to_numpy()
    else:
        from_end, length = np.arange(len(valid))[::-1], np.full(len(valid), len(valid))
    in_calibration = from_end < np.round(length * share)
    return valid.loc[in_calibration], valid.loc[~in_calibration]


def _log_threshold_review(
    detector: AutoencoderDetector, data_source: str, latent_view: _LatentView | None
) -> None:
    """What a reviewer needs to judge the threshold: quantile table and summary.

    The latent view (``plots/latent_pca.png``) is logged beside it for every kind.
    """
    thr = detector.thresholder_
    quantiles = thr.quantiles(CALIBRATION_LEVELS)
    table = pd.DataFrame(
        {
            "quantile": [f"{lv:g}" for lv in quantiles],
            "calibration_error": list(quantiles.values()),
            "share_of_calibration_above": [
                float((thr.calibration_scores_ > v).mean()) for v in quantiles.values()
            ],
        }
    )
    mlflow.log_table(table, "review/threshold_quantiles.json")
    lines = [
        "# Threshold review",
        "",
        f"- data: `{data_source}`",
        f"- threshold: **{detector.threshold_:.6g}**, the conformal {thr.q:g} quantile of "
        f"{len(thr.calibration_scores_)} held-out normal errors",
        f"- expected false-positive rate on normal data: at most {1 - thr.q:.2%}",
    ]
    if latent_view is not None:
        share = float(thr.predict(latent_view.scores).mean())
        lines.append(
            f"- share above it of the {len(latent_view.scores)} {latent_view.what} in the latent "
            f"view: {share:.2%}"
        )
    lines += [
        "",
        "| quantile | calibration error | share above |",
        "|---|---|---|",
        *(
            f"| {row.quantile} | {row.calibration_error:.6g} | {row.share_of_calibration_above:.2%} |"
            for row in table.itertuples()
        ),
        "",
        "Plots: `plots/calibration_histogram.png` (errors and the threshold line), "
        "`plots/latent_pca.png` (latent codes coloured by score, those above the threshold "
        "ringed in red). Scoring runs log "
        "`plots/batch_score_histogram.png` for each batch against these errors.",
        "",
        "Change the threshold without retraining: "
        "`anomaly threshold set MODEL_URI --quantile Q --reason '...'`",
    ]
    mlflow.log_text("\n".join(lines) + "\n", "review/threshold_summary.md")


def requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in (
        "torch",
        "numpy",
        "pandas",
        "pyarrow",
        "scikit-learn",
        "skops",
        "safetensors",
        "mlflow",
    ):
        try:
            out.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            out.append(package)
    return out
