"""Training flow: read normal data, fit and calibrate a detector, log it to MLflow, register and gate it."""

from __future__ import annotations

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from anomaly.config import TrainSettings
from anomaly.data.images import ImageBatch
from anomaly.detectors import AutoencoderDetector
from anomaly.monitoring import GateResult, GateSettings
from anomaly.pipeline import TrainingData, fit_detector, prepare_training_data
from anomaly.registry import champion_settings, gate_and_promote
from anomaly.tracking import RegisteredModel, TrackingConfig, log_training_run
from flows import retry_unless_bad_input


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def load_normal_data(
    data: str, settings: TrainSettings, holdout: str | None, labelled: str | None
) -> TrainingData:
    return prepare_training_data(data, settings, holdout, labelled)


@task(cache_policy=NO_CACHE)
def fit(frame: pd.DataFrame | ImageBatch, settings: TrainSettings) -> AutoencoderDetector:
    return fit_detector(frame, settings)


# Retried safely: a repeat finds the version the first attempt registered (by the flow run's
# key) instead of registering a second one.
@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def log_and_register(
    detector: AutoencoderDetector,
    frame: pd.DataFrame | ImageBatch,
    data: str,
    tracking: TrackingConfig,
    run_name: str | None,
    settings: TrainSettings,
) -> RegisteredModel:
    return log_training_run(
        detector,
        frame,
        data,
        tracking,
        run_name=run_name,
        settings=settings.model_dump(mode="json"),
        idempotency_key=f"prefect-flow-run:{flow_run.get_id()}" if flow_run.get_id() else None,
    )


# Scoring the hold-out again and setting tags and an alias again is harmless, so this may retry.
@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def gate(
    model: RegisteredModel,
    detector: AutoencoderDetector,
    prepared: TrainingData,
    tracking: TrackingConfig,
    settings: GateSettings,
) -> GateResult:
    return gate_and_promote(
        model, detector, prepared.holdout, tracking, settings, prepared.labelled
    )


@flow(name="anomaly-train", log_prints=True)
def train_flow(
    data: str = "data/sensors_train.parquet",
    settings: TrainSettings | None = None,
    tracking_config: str | None = None,
    run_name: str | None = None,
    holdout: str | None = None,
    labelled: str | None = None,
    model_name: str | None = None,
    reuse_champion_settings: bool = False,
) -> RegisteredModel:
    """Fit an autoencoder on normal data, calibrate, log to MLflow, register and gate a version.

    The version becomes ``models:/NAME@champion`` only if it passes the promotion gate on
    ``holdout`` (default: a share of ``data`` kept out of training) and, with ``labelled`` data,
    the AUROC floor. A hold-out too small to tell gives the verdict "inconclusive": not promoted
    unless ``settings.gate.allow_inconclusive`` or this is the name's first version (see
    :func:`anomaly.registry.gate_and_promote`). ``model_name`` registers under that name instead of mlflow.yaml's. With
    ``reuse_champion_settings`` and no ``settings`` (the nightly retrain), the champion's own
    training settings are used, so the retrain makes the same kind of model on the new data.
    """
    tracking = TrackingConfig.load(tracking_config, model_name)
    if settings is None and reuse_champion_settings:
        settings = champion_settings(tracking)
    settings = settings or TrainSettings()
    prepared = load_normal_data(data, settings, holdout, labelled)
    detector = fit(prepared.fit, settings)
    model = log_and_register(detector, prepared.fit, data, tracking, run_name, settings)
    result = gate(model, detector, prepared, tracking, settings.gate)
    info = detector.fit_info_
    # The verdict in the flow run's log too, where `anomaly serve` users look first.
    log = get_run_logger()
    (log.info if result.passed else log.warning)("%s gate %s", model.model_uri, result.summary())
    verdict = {
        ("passed", True): "passed: now `champion`",
        ("failed", False): "FAILED: `champion` unchanged",
        ("inconclusive", False): "inconclusive — not promoted: `champion` unchanged",
        ("inconclusive", True): "inconclusive — promoted all the same: now `champion`",
    }[(result.verdict, result.promoted)]
    auroc = f", AUROC {result.auroc:.3f}" if result.auroc is not None else ""
    create_markdown_artifact(
        key="anomaly-train-summary",
        markdown="\n".join(
            [
                f"## Trained `{model.model_uri}`",
                "",
                "| item | value |",
                "|---|---|",
                f"| threshold | {detector.threshold_:.6g} (q={settings.quantile}) |",
                f"| training rows | {len(prepared.frame)} ({len(prepared.holdout)} held out for the gate) |",
                f"| rows set aside (NaN/inf, undecodable) | {info['n_rejected']} |",
                f"| fit / validation / calibration | {info['n_fit']} / {info['n_validation']} / {info['n_calibration']} |",
                f"| epochs run (best) | {len(detector.history_.train_loss)} ({detector.history_.best_epoch}) |",
                f"| gate | {verdict} |",
                f"| hold-out false-positive rate | {result.false_positive_rate:.2%} "
                f"(interval [{result.ci_low:.2%}, {result.ci_high:.2%}], target {result.target_rate:.2%}){auroc} |",
                f"| hold-out rows (needed to tell) | {result.n_holdout} ({result.min_holdout}) |",
                f"| MLflow run | {model.run_id} |",
                "",
                *(f"- {reason}" for reason in result.reasons),
            ]
        ),
        description=f"Training run for `{model.model_uri}` on `{data}`",
    )
    return model
