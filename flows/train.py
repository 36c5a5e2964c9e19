"""Training flow: read normal data, fit and calibrate a detector, log it to MLflow and register it."""

from __future__ import annotations

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from anomaly.config import TrainSettings
from anomaly.detectors import AutoencoderDetector
from anomaly.pipeline import fit_detector, read_training_data
from anomaly.tracking import RegisteredModel, TrackingConfig, log_training_run
from flows import retry_unless_bad_input


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def load_normal_data(data: str, settings: TrainSettings) -> pd.DataFrame:
    return read_training_data(data, settings)


@task(cache_policy=NO_CACHE)
def fit(frame: pd.DataFrame, settings: TrainSettings) -> AutoencoderDetector:
    return fit_detector(frame, settings)


# No retries: registering is not idempotent, and a retry after a partial failure would
# register a second version of the same model.
@task(cache_policy=NO_CACHE)
def log_and_register(
    detector: AutoencoderDetector,
    frame: pd.DataFrame,
    data: str,
    tracking: TrackingConfig,
    run_name: str | None,
) -> RegisteredModel:
    return log_training_run(detector, frame, data, tracking, run_name=run_name)


@flow(name="anomaly-train", log_prints=True)
def train_flow(
    data: str = "data/sensors_train.parquet",
    settings: TrainSettings | None = None,
    tracking_config: str | None = None,
    run_name: str | None = None,
) -> RegisteredModel:
    """Fit an autoencoder on normal data, calibrate its threshold, log to MLflow and register a version."""
    settings = settings or TrainSettings()
    tracking = TrackingConfig.load(tracking_config)
    frame = load_normal_data(data, settings)
    detector = fit(frame, settings)
    model = log_and_register(detector, frame, data, tracking, run_name)
    create_table_artifact(
        key="anomaly-train-summary",
        table=[
            {"item": "model", "value": f"{model.name} v{model.version}"},
            {"item": "threshold", "value": f"{detector.threshold_:.6g} (q={settings.quantile})"},
            {"item": "training rows", "value": len(frame)},
            {"item": "rows set aside (NaN/inf)", "value": detector.fit_info_["n_rejected"]},
            {
                "item": "fit / validation / calibration",
                "value": "{n_fit} / {n_validation} / {n_calibration}".format(**detector.fit_info_),
            },
            {
                "item": "epochs run (best)",
                "value": f"{len(detector.history_.train_loss)} ({detector.history_.best_epoch})",
            },
            {"item": "MLflow run", "value": model.run_id},
        ],
        description=f"Training run for `{model.model_uri}` on `{data}`",
    )
    return model
