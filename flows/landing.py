"""Landing-folder scoring flow: score each new Parquet file once, monitor each batch, raise alerts.

What the scheduled scoring deployment runs (see ``flows/deployments.py``). The logic lives in
:mod:`anomaly.landing` and :mod:`anomaly.monitoring`; this flow only sequences it and reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.blocks.core import Block
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.states import Completed, Failed, State
from prefect.utilities.asyncutils import run_coro_as_sync

from anomaly.landing import FileResult, LandingFile, Ledger, pending_files, score_landing_file
from anomaly.monitoring import AlertSettings
from anomaly.tracking import LoadedModel, TrackingConfig
from flows import PARTIAL_FAILURE_STATE, ReportedFailure, retry_unless_bad_input
from flows.score import load_model

ALERT_STATE = "AnomalyAlert"
ALERT_EVENT = "anomaly.batch.alert"


@dataclass
class LandingRun:
    """What one run over the landing folder did."""

    model_uri: str
    scored: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)


class LandingRunFailed(ReportedFailure):
    """What ``result()`` raises for a failed landing run; ``run`` is the run's record."""

    def __init__(self, message: str, run: LandingRun):
        super().__init__(message, run)
        self.run = run


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def find_new_files(landing: str, output_dir: str, min_age_seconds: float) -> list[LandingFile]:
    return pending_files(landing, Ledger(output_dir), min_age_seconds)


# Safe to retry: outputs keep their names, the MLflow run is found by key, the ledger goes last.
@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
    task_run_name="score {file.name}",
)
def score_file(
    model: LoadedModel,
    file: LandingFile,
    output_dir: str,
    tracking: TrackingConfig,
    alerts: AlertSettings,
) -> FileResult:
    return score_landing_file(model, file, output_dir, tracking, alerts)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def notify(block_name: str, subject: str, body: str) -> None:
    async def send() -> None:
        block: Any = await Block.aload(block_name)
        await block.anotify(body, subject)

    run_coro_as_sync(send())


@flow(name="anomaly-score-landing", log_prints=True)
def landing_flow(
    landing: str = "data/landing",
    output_dir: str = "outputs/landing",
    model_uri: str | None = None,
    tracking_config: str | None = None,
    alerts: AlertSettings | None = None,
    notification_block: str | None = None,
    min_age_seconds: float = 0.0,
    device: str = "auto",
    model_name: str | None = None,
) -> State[Any] | LandingRun:
    """Score every Parquet file in ``landing`` not yet in the ledger of ``output_dir``.

    Uses ``model_uri`` (default ``models:/NAME@champion``, NAME from ``model_name`` or
    mlflow.yaml). A file that fails is left out of the
    ledger for the next run while the others go on; the run then ends Failed naming it. A file
    that cannot be scored at all (not Parquet, a column missing) is quarantined in the ledger
    and the run ends in a Failed state named ``PartialFailure``. A batch
    whose anomaly rate or score drift raises an alert ends the run in a Completed state named
    ``AnomalyAlert``, emits the event ``anomaly.batch.alert`` and, when ``notification_block``
    names a saved Prefect notification block (``slack-webhook/ops``, ``custom-webhook/pager``),
    sends the alert through it.
    """
    logger = get_run_logger()
    alerts = alerts or AlertSettings()
    tracking = TrackingConfig.load(tracking_config, model_name)
    model = load_model(model_uri or tracking.champion_model_uri, tracking, device)
    run = LandingRun(model_uri=model.model_uri)
    for file in find_new_files(landing, output_dir, min_age_seconds):
        state = score_file(model, file, output_dir, tracking, alerts, return_state=True)
        if not state.is_completed():
            run.failed.append(f"{file.name}: {state.message}")
            continue
        result: FileResult = state.result()
        if result.report is None:  # quarantined, with the reason in result.quarantined
            run.quarantined.append(f"{file.name}: {result.quarantined}")
            continue
        run.scored.append(result.summary())
        run.alerts += [f"{file.name}: {reason}" for reason in result.report.alerts]
        if result.report.alert:
            emit_event(
                event=ALERT_EVENT,
                resource={
                    "prefect.resource.id": f"anomaly.model.{model.name}.{model.version}",
                    "prefect.resource.name": model.model_uri,
                },
                payload={"file": file.name, **result.summary(), "mlflow_run_id": result.run_id},
            )

    table = run.scored + [{"file": f"QUARANTINED {q}"} for q in run.quarantined]
    create_table_artifact(
        key="anomaly-landing-summary",
        table=table or [{"file": "(no new files)"}],
        description=f"Landing folder `{landing}` scored with `{model.model_uri}` into `{output_dir}`"
        + (f"; failed: {run.failed}" if run.failed else ""),
    )
    logger.info(
        "%d new file(s) scored, %d quarantined, %d failed",
        len(run.scored),
        len(run.quarantined),
        len(run.failed),
    )
    if run.alerts and notification_block:
        notify(
            notification_block,
            f"anomaly alert: {model.model_uri}",
            "\n".join(run.alerts),
        )
    if run.failed:
        message = "; ".join(run.failed + run.quarantined + run.alerts)
        return Failed(message=message, data=LandingRunFailed(message, run))
    if run.quarantined:
        message = "quarantined: " + "; ".join(run.quarantined + run.alerts)
        return Failed(
            name=PARTIAL_FAILURE_STATE, message=message, data=LandingRunFailed(message, run)
        )
    if run.alerts:
        return Completed(name=ALERT_STATE, message="; ".join(run.alerts), data=run)
    return run
