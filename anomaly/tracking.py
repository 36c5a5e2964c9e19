"""MLflow tracking and registry: the only module that reads ``mlflow.yaml`` and calls mlflow."""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow.data.pandas_dataset import from_pandas
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, PrivateAttr

from anomaly import plots
from anomaly.data.schema import invalid_row_reasons
from anomaly.errors import ModelFileError, ModelNotFoundError
from anomaly.integrity import MANIFEST_TAG, manifest_digest, verify_digest
from anomaly.models import data_kind
from anomaly.tracking_uri import check_tracking_uri, require_store, sqlite_path

if TYPE_CHECKING:
    from anomaly.data.images import ImageBatch
    from anomaly.detectors import AutoencoderDetector
    from anomaly.monitoring import BatchReport, GateResult
    from anomaly.scoring import BatchSummary

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("mlflow.yaml")
_PYFUNC_ENTRY = Path(__file__).with_name("mlflow_model.py")
_CALIBRATION_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)
CHAMPION = "champion"
TRAIN_SETTINGS_ARTIFACT = "train_settings.json"
_KEY_TAG = "anomaly.idempotency_key"


class TrackingConfig(BaseModel):
    """Contents of ``mlflow.yaml``. ``MLFLOW_TRACKING_URI`` in the environment overrides ``tracking_uri``."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str | None = "mlartifacts"
    experiment_name: str = "anomaly"
    registered_model_name: str = "anomaly-detector"
    # Where the configuration was looked for, and whether it was found: errors about a missing
    # store say so, since a command run outside the project folder finds no mlflow.yaml.
    _looked_for: Path | None = PrivateAttr(default=None)
    _found: bool = PrivateAttr(default=False)

    @property
    def latest_model_uri(self) -> str:
        """``models:/NAME/latest`` for the configured registered model."""
        return f"models:/{self.registered_model_name}/latest"

    @property
    def champion_model_uri(self) -> str:
        """``models:/NAME@champion``: the version that passed the promotion gate last."""
        return f"models:/{self.registered_model_name}@{CHAMPION}"

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, model_name: str | None = None
    ) -> TrackingConfig:
        """Read ``path`` (default ``./mlflow.yaml`` if present, else built-in defaults).

        ``model_name`` replaces ``registered_model_name``: one store, several models side by side.
        """
        file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
        data: dict[str, Any] = {}
        if file.is_file():
            data = yaml.safe_load(file.read_text()) or {}
        elif path is not None:
            raise FileNotFoundError(f"{file}: tracking config not found")
        if model_name:
            data["registered_model_name"] = model_name
        config = cls(**data)
        if os.environ.get("MLFLOW_TRACKING_URI"):
            config = config.model_copy(update={"tracking_uri": os.environ["MLFLOW_TRACKING_URI"]})
        # A relative SQLite path means the current folder *now*: MLflow keeps one store per URI
        # string for the life of the process, so a later chdir would read another folder's.
        if (db := sqlite_path(config.tracking_uri)) is not None and not db.is_absolute():
            config = config.model_copy(update={"tracking_uri": f"sqlite:///{db.resolve()}"})
        config._looked_for, config._found = file.resolve(), file.is_file()
        return config

    def origin(self) -> str:
        """Where these settings came from, for error messages."""
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return "MLFLOW_TRACKING_URI"
        if self._looked_for is None:
            return "settings given in code"
        if self._found:
            return str(self._looked_for)
        return f"built-in defaults ({self._looked_for} not found)"


def configure(config: TrackingConfig) -> str:
    """Point mlflow at the configured store and experiment; return the experiment id."""
    check_tracking_uri(config.tracking_uri)
    mlflow.set_tracking_uri(config.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = None
        if config.artifact_location and "://" not in config.artifact_location:
            location = Path(config.artifact_location).resolve().as_uri()
        elif config.artifact_location:
            location = config.artifact_location
        experiment_id = client.create_experiment(config.experiment_name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@dataclass(frozen=True)
class RegisteredModel:
    """Where a trained detector ended up."""

    run_id: str
    name: str
    version: str
    model_uri: str
    tracking_uri: str


def _log_figure(fig: Any, name: str) -> None:
    mlflow.log_figure(fig, name)
    plt.close(fig)


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
    digest, threshold, quantile, calibration size and validation loss.

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
    if (done := _finished_run(experiment_id, idempotency_key)) is not None:
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
        run_tags[_KEY_TAG] = _hash_key(idempotency_key)
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
        quantiles = thr.quantiles(_CALIBRATION_LEVELS)
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

        _log_figure(
            plots.score_histogram(thr.calibration_scores_, detector.threshold_, thr.q),
            "plots/calibration_histogram.png",
        )
        _log_figure(
            plots.loss_curves(history.train_loss, history.val_loss, history.best_epoch),
            "plots/loss_curves.png",
        )
        example: pd.DataFrame | None = None
        if images is not None:
            _log_image_review(detector, images.images)
        else:
            if detector.window is not None:
                per_feature, example = _review_series(detector, training_frame)
            else:
                per_feature, example = _review_table(detector, training_frame)
            _log_figure(
                plots.feature_error_bars(list(per_feature.index), per_feature.to_numpy()),
                "plots/feature_errors.png",
            )
            mlflow.log_dict(per_feature.to_dict(), "feature_errors.json")
            _log_threshold_review(detector, training_frame, data_source)

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
                python_model=str(_PYFUNC_ENTRY),
                artifacts={"detector": str(saved)},
                code_paths=[str(Path(__file__).parent)],
                signature=signature,
                input_example=example,
                registered_model_name=config.registered_model_name,
                pip_requirements=_requirements(),
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
            MANIFEST_TAG: digest,
        }.items():
            client.set_model_version_tag(config.registered_model_name, version, key, value)
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
    _log_figure(
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
    values, reasons, _ = detector._series_rows(training_frame, None)
    names = detector.schema_.feature_names
    per_feature = pd.Series(np.nanmean(values[:, 1:], axis=0), index=names)
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
    _log_figure(
        plots.series_review(
            times[: len(keep)],
            shown[names].to_numpy(dtype=float)[keep],
            names,
            values[positions[keep], 0],
            detector.threshold_,
            title="Training series (calibration = last part)",
        ),
        "plots/series_review.png",
    )
    columns = [*detector.schema_.keys, *names]
    clean = training_frame.loc[reasons == "", columns]
    example = clean.head(2 * int(detector.window)).reset_index(drop=True)  # type: ignore[arg-type]
    return per_feature, example


def _hash_key(key: str) -> str:
    # Hashed so that any text (paths with quotes) is safe inside an MLflow filter string.
    return hashlib.sha256(key.encode()).hexdigest()


def _finished_run(experiment_id: str, idempotency_key: str | None) -> str | None:
    """The id of a finished run logged earlier under ``idempotency_key``, if any."""
    if not idempotency_key:
        return None
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{_KEY_TAG}` = '{_hash_key(idempotency_key)}' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def frame_digest(frame: pd.DataFrame) -> str:
    """Content digest of a table (values and column names, not the file layout): 16 hex digits."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _log_threshold_review(
    detector: AutoencoderDetector, training_frame: pd.DataFrame, data_source: str
) -> None:
    """What a reviewer needs to judge the threshold: quantile table, latent view, summary.

    The latent view covers tabular models (calibration rows); a series model's review plot is
    ``plots/series_review.png``.
    """
    thr = detector.thresholder_
    calibration_rows = training_frame.iloc[:0]
    if detector.window is None:
        split = getattr(detector, "split_index_", None)
        review = (
            training_frame.loc[split["calibration"]]
            if split is not None and split["calibration"].isin(training_frame.index).all()
            else training_frame
        )
        calibration_rows = review.loc[
            (invalid_row_reasons(review, detector.schema_) == "").to_numpy()
        ]
    quantiles = thr.quantiles(_CALIBRATION_LEVELS)
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
    flagged_share = None
    if len(calibration_rows) >= 3:
        sample = calibration_rows.sample(n=min(len(calibration_rows), 3000), random_state=0)
        flagged = detector.predict(sample)
        flagged_share = float(flagged.mean())
        _log_figure(
            plots.latent_pca(detector.latent(sample), flagged, detector.threshold_),
            "plots/latent_pca.png",
        )
    lines = [
        "# Threshold review",
        "",
        f"- data: `{data_source}`",
        f"- threshold: **{detector.threshold_:.6g}**, the conformal {thr.q:g} quantile of "
        f"{len(thr.calibration_scores_)} held-out normal errors",
        f"- expected false-positive rate on normal data: at most {1 - thr.q:.2%}",
    ]
    if flagged_share is not None:
        lines.append(f"- share of calibration rows above it: {flagged_share:.2%}")
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
        "`plots/latent_pca.png` (latent codes, flagged rows in red). Scoring runs log "
        "`plots/batch_score_histogram.png` for each batch against these errors.",
        "",
        "Change the threshold without retraining: "
        "`anomaly threshold set MODEL_URI --quantile Q --reason '...'`",
    ]
    mlflow.log_text("\n".join(lines) + "\n", "review/threshold_summary.md")


def _requirements() -> list[str]:
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


@dataclass(frozen=True)
class LoadedModel:
    """A detector fetched from the registry, with the name and version to stamp on outputs."""

    detector: AutoencoderDetector
    name: str
    version: str
    model_uri: str


def resolve_model_version(model_uri: str, config: TrackingConfig) -> tuple[str, str]:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``models:/NAME/latest`` -> (name, version).

    Never creates a tracking store: a missing one is a :class:`TrackingStoreError`.
    """
    require_store(config.tracking_uri, config.origin())
    configure(config)
    if not model_uri.startswith("models:/"):
        raise ValueError(f"expected a models:/ URI, got {model_uri!r}")
    client = MlflowClient()
    ref = model_uri[len("models:/") :]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = ref.partition("/")
        if version in ("", "latest"):
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ModelNotFoundError(
                    f"{model_uri}: no registered versions of model '{name}' in {config.tracking_uri}"
                )
            return name, str(max(int(v.version) for v in versions))
        return name, str(client.get_model_version(name, version).version)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"{model_uri}: not found in {config.tracking_uri} ({exc.message})"
        ) from exc


def load_registered_detector(
    model_uri: str, config: TrackingConfig, device: str = "auto"
) -> LoadedModel:
    """Download a registered model's detector files and load them safely (no pyfunc code is run)."""
    from anomaly.detectors import AutoencoderDetector

    name, version = resolve_model_version(model_uri, config)
    exact = f"models:/{name}/{version}"
    # The detector is read into memory whole, so the download can go once it is loaded.
    with tempfile.TemporaryDirectory(prefix="anomaly-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=exact, dst_path=tmp))
        detector_dir = local / "artifacts" / "detector"
        if not detector_dir.is_dir():
            raise ModelFileError(
                f"{exact}: no detector files in the model artifact (expected artifacts/detector)"
            )
        tags = MlflowClient().get_model_version(name, version).tags
        if MANIFEST_TAG in tags:
            verify_digest(detector_dir, tags[MANIFEST_TAG], exact)
        else:
            logger.warning("%s: no manifest digest recorded (registered before v0.1.1)", exact)
        detector = AutoencoderDetector.load(detector_dir, device=device)
    # The version's recorded threshold is what reviewers approved; a model whose files say
    # otherwise was changed after registration, whatever its manifest says.
    if "threshold" in tags and f"{detector.threshold_:.6g}" != tags["threshold"]:
        raise ModelFileError(
            f"{exact}: threshold {detector.threshold_:.6g} differs from the {tags['threshold']} "
            "recorded on the version; refusing to load"
        )
    return LoadedModel(detector, name, version, exact)


def log_scoring_run(
    batch: BatchSummary,
    model: LoadedModel,
    input_path: str,
    output_path: str,
    rejects_path: str | None,
    config: TrackingConfig,
    run_name: str | None = None,
    report: BatchReport | None = None,
    idempotency_key: str | None = None,
    skipped: Sequence[tuple[str, str]] = (),
) -> str:
    """Log one scored batch: counts, anomaly rate, score quantiles and a score histogram.

    ``skipped``: entries of the input directory or glob not read, ``(path, reason)``.

    With a monitoring ``report``, also its drift and alert figures, an ``anomaly.alert`` tag, and
    the same figures as the next step of the model version's monitoring run
    (``monitor NAME vVERSION``), so the MLflow UI charts them over time per model. With
    ``idempotency_key``, a repeat of a call that finished returns the run it logged.
    """
    experiment_id = configure(config)
    if (done := _finished_run(experiment_id, idempotency_key)) is not None:
        return done
    tags = {"anomaly.run_type": "scoring", "anomaly.model": f"{model.name}/{model.version}"}
    if idempotency_key:
        tags[_KEY_TAG] = _hash_key(idempotency_key)
    if report is not None:
        tags["anomaly.alert"] = "; ".join(report.alerts) or "none"
    # Findable in the UI's search: tags.`anomaly.status` = "partial_failure".
    tags["anomaly.status"] = "partial_failure" if batch.quarantined else "complete"
    name = run_name or f"score {model.name} v{model.version}"
    with mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params(
            {
                "model_uri": model.model_uri,
                "model_name": model.name,
                "model_version": model.version,
                "input": input_path,
                "output": output_path,
                "rejects": rejects_path or "",
            }
        )
        scores = batch.scores
        metrics = {
            "rows_in": batch.n_rows + batch.n_quarantined_rows,
            "rows_scored": batch.n_scored,
            "rows_rejected": batch.n_rejected,
            "rows_flagged": batch.n_flagged,
            # Rows in = scored + rejected + rows of quarantined files (where their count is known).
            "rows_quarantined": batch.n_quarantined_rows,
            "files_quarantined": len(batch.quarantined),
            "files_skipped": len(skipped),
            # Series: anomaly events closed in this batch (each counted once over batches).
            **({"events": batch.n_events} if hasattr(batch, "n_events") else {}),
            "anomaly_rate": batch.anomaly_rate,
            "threshold": model.detector.threshold_,
            **{f"series_{k}": v for k, v in batch.series_counts.items()},
        }
        if len(scores):
            metrics |= {
                f"score_p{lv * 100:g}".replace(".", "_"): float(np.quantile(scores, lv))
                for lv in _CALIBRATION_LEVELS
            }
        if report is not None:
            metrics |= report.metrics()
        mlflow.log_metrics(metrics)
        if batch.quarantined:
            mlflow.log_dict(
                {"files": [asdict(f) for f in batch.quarantined]}, "quarantined_files.json"
            )
        if skipped:
            entries = [{"path": path, "reason": reason} for path, reason in skipped]
            mlflow.log_dict({"entries": entries}, "skipped_inputs.json")
        thr = model.detector.thresholder_
        _log_figure(
            plots.score_histogram(
                thr.calibration_scores_,
                thr.threshold_,
                thr.q,
                scores,
                title="Batch scores vs calibration",
            ),
            "plots/batch_score_histogram.png",
        )
        review = getattr(batch, "images", None)
        if review is not None and len(review.top_rows):
            _log_figure(
                plots.image_grid(
                    review.top_images,
                    review.top_reconstructions,
                    review.top_error_maps,
                    scores[review.top_rows],
                    title="Highest-scoring images (score above), reconstructions, error maps",
                ),
                "plots/top_scoring_images.png",
            )
        run_id = run.info.run_id
    if report is not None:
        _log_monitor_step(experiment_id, model, metrics, run_id)
    return run_id


def _log_monitor_step(
    experiment_id: str, model: LoadedModel, metrics: dict[str, float], scoring_run_id: str
) -> None:
    """Append a batch's figures to the model version's long-lived monitoring run, one step each."""
    client = MlflowClient()
    target = f"{model.name}/{model.version}"
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`anomaly.monitor_for` = '{target}'",
        max_results=1,
    )
    if runs:
        monitor_id = runs[0].info.run_id
        steps = client.get_metric_history(monitor_id, "rows_scored")
        step = max((m.step for m in steps), default=-1) + 1
    else:
        monitor_id = client.create_run(
            experiment_id,
            run_name=f"monitor {model.name} v{model.version}",
            tags={"anomaly.run_type": "monitoring", "anomaly.monitor_for": target},
        ).info.run_id
        step = 0
    stamp = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    client.log_batch(
        monitor_id,
        metrics=[mlflow.entities.Metric(k, float(v), stamp, step) for k, v in metrics.items()],
    )
    client.set_tag(monitor_id, "anomaly.last_scoring_run", scoring_run_id)
    # Each step leaves it FINISHED: a RUNNING run between batches looks hung in the UI. Later
    # batches still append to it (MLflow logs to finished runs).
    client.set_terminated(monitor_id, "FINISHED")


def promote(
    model: RegisteredModel,
    gate: GateResult,
    config: TrackingConfig,
    alias: str = CHAMPION,
) -> bool:
    """Record the promotion gate on the training run and the version; move ``alias`` if it passed.

    The gate's figures go to the run as ``gate_*`` metrics and ``review/gate.json``, and to the
    model version as ``gate.*`` tags. A failed gate leaves the alias where it was, so the serving
    model (``models:/NAME@champion``) is never replaced by a version that failed.
    """
    configure(config)
    client = MlflowClient()
    figures = {
        "gate_passed": float(gate.passed),
        "gate_false_positive_rate": gate.false_positive_rate,
        "gate_ci_low": gate.ci_low,
        "gate_ci_high": gate.ci_high,
        "gate_n_holdout": gate.n_holdout,
        **({"gate_auroc": gate.auroc} if gate.auroc is not None else {}),
    }
    stamp = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    client.log_batch(
        model.run_id, metrics=[mlflow.entities.Metric(k, v, stamp, 0) for k, v in figures.items()]
    )
    client.log_text(model.run_id, json.dumps(gate.as_dict(), indent=1), "review/gate.json")
    tags = {
        "gate.passed": str(gate.passed).lower(),
        "gate.false_positive_rate": f"{gate.false_positive_rate:.4g}",
        "gate.interval": f"[{gate.ci_low:.4g}, {gate.ci_high:.4g}] at {gate.confidence:g}",
        "gate.n_holdout": str(gate.n_holdout),
        "gate.auroc": "" if gate.auroc is None else f"{gate.auroc:.4f}",
        "gate.reasons": "; ".join(gate.reasons) or "none",
    }
    for key, value in tags.items():
        client.set_model_version_tag(model.name, model.version, key, value)
    if gate.passed:
        client.set_registered_model_alias(model.name, alias, model.version)
        logger.info(
            "%s passed the gate: alias %s -> version %s", model.model_uri, alias, model.version
        )
    else:
        logger.warning(
            "%s failed the gate (%s); alias %s unchanged",
            model.model_uri,
            "; ".join(gate.reasons),
            alias,
        )
    return gate.passed


def recorded_train_settings(
    name: str, version: str, config: TrackingConfig
) -> dict[str, Any] | None:
    """The training settings a version's run recorded, or None (a version registered before)."""
    configure(config)
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    try:
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAIN_SETTINGS_ARTIFACT}")
    except (MlflowException, OSError):
        return None
    return dict(loaded)


def alias_version(name: str, alias: str, config: TrackingConfig) -> str | None:
    """The version ``models:/NAME@ALIAS`` points at, or None when the alias is not set."""
    configure(config)
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register_threshold_change(
    source: LoadedModel,
    detector: AutoencoderDetector,
    reason: str,
    config: TrackingConfig,
    changed_by: str | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    """Register ``detector`` (``source``'s network with a new threshold) as a new version.

    The source version is left as it was. The new version carries the source's data tags, the
    new threshold and quantile, and who changed it and why; a run of type ``threshold-change``
    holds the old and new figures and the calibration histogram. ``alias`` (e.g. ``champion``)
    is moved to the new version only when given.
    """
    configure(config)
    client = MlflowClient()
    who = changed_by or getpass.getuser()
    old = source.detector.thresholder_
    new = detector.thresholder_
    info = mlflow.models.get_model_info(source.model_uri)
    source_tags = client.get_model_version(source.name, source.version).tags
    with mlflow.start_run(
        run_name=f"threshold {source.name} v{source.version}",
        tags={
            "anomaly.run_type": "threshold-change",
            "anomaly.changed_by": who,
            "anomaly.reason": reason,
        },
    ) as run:
        mlflow.log_params(
            {
                "source_model_uri": source.model_uri,
                "old_threshold": f"{old.threshold_:.6g}",
                "old_quantile": str(old.q),
                "new_threshold": f"{new.threshold_:.6g}",
                "new_quantile": str(new.q),
                "changed_by": who,
                "reason": reason[:500],
            }
        )
        mlflow.log_metrics(
            {
                "threshold": new.threshold_,
                "quantile": new.q,
                "calibration_size": len(new.calibration_scores_),
                "share_of_calibration_above": float(
                    (new.calibration_scores_ > new.threshold_).mean()
                ),
            }
        )
        _log_figure(
            plots.score_histogram(new.calibration_scores_, new.threshold_, new.q),
            "plots/calibration_histogram.png",
        )
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "detector"
            detector.save(saved)
            digest = manifest_digest(saved)
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(_PYFUNC_ENTRY),
                artifacts={"detector": str(saved)},
                code_paths=[str(Path(__file__).parent)],
                signature=info.signature,
                registered_model_name=source.name,
                pip_requirements=_requirements(),
            )
    version = str(logged.registered_model_version)
    client.set_tag(
        run.info.run_id,
        "mlflow.runName",
        f"threshold {source.name} v{source.version} -> v{version} ({new.threshold_:.6g})",
    )
    client.set_tag(run.info.run_id, "anomaly.created_version", version)
    carried = {
        k: v for k, v in source_tags.items() if k.startswith("data_") or k == "validation_loss"
    }
    for key, value in {
        **carried,
        "threshold": f"{new.threshold_:.6g}",
        "quantile": str(new.q),
        "calibration_size": str(len(new.calibration_scores_)),
        "run_id": run.info.run_id,
        "threshold_changed_from": f"{source.model_uri} ({old.threshold_:.6g}, q={old.q:g})",
        "threshold_changed_by": who,
        "threshold_change_reason": reason,
        MANIFEST_TAG: digest,
    }.items():
        client.set_model_version_tag(source.name, version, key, value)
    if alias:
        client.set_registered_model_alias(source.name, alias, version)
    model_uri = f"models:/{source.name}/{version}"
    logger.info(
        "registered %s with threshold %.6g (was %.6g)", model_uri, new.threshold_, old.threshold_
    )
    return RegisteredModel(
        run.info.run_id, source.name, version, model_uri, mlflow.get_tracking_uri()
    )


def ui_command(config: TrackingConfig) -> str:
    """The shell command that opens the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri {config.tracking_uri}"
