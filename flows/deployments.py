"""Scheduled deployments: nightly retraining and frequent scoring of a landing folder.

``anomaly serve`` (or ``python -m flows.deployments``) serves both from this process: Prefect
schedules the runs and this process executes them, against ``PREFECT_API_URL`` when set, else a
local Prefect server started for the process (see ``flows.local_server``). ``prefect.yaml`` declares the same two deployments
for ``prefect deploy`` onto a Prefect server and a work pool (see the README).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from anomaly.config import TrainSettings
from anomaly.monitoring import AlertSettings

logger = logging.getLogger(__name__)


class ServeSettings(BaseModel):
    """Where the scheduled runs read and write, and when they run."""

    model_config = ConfigDict(extra="forbid")

    train_data: str = Field("data/sensors_train.parquet", description="Normal data to retrain on")
    train_cron: str = Field("0 2 * * *", description="Retraining schedule (cron, server time)")
    landing: str = Field("data/landing", description="Folder new Parquet batches arrive in")
    output_dir: str = Field("outputs/landing", description="Scored files and the ledger")
    score_interval_seconds: int = Field(300, gt=0, description="How often to look for new files")
    min_age_seconds: float = Field(
        30.0, ge=0, description="Leave files younger than this (still being copied in)"
    )
    tracking_config: str | None = Field(None, description="mlflow.yaml (default ./mlflow.yaml)")
    model_name: str | None = Field(
        None, description="Registered model to retrain and serve (default: mlflow.yaml's)"
    )
    notification_block: str | None = Field(
        None, description="Prefect notification block for alerts, e.g. slack-webhook/ops"
    )
    train_settings: TrainSettings | None = Field(
        None,
        description="Settings of the nightly retrain; unset: the champion's own training settings",
    )
    alerts: AlertSettings = Field(default_factory=AlertSettings)


def build_deployments(settings: ServeSettings | None = None) -> list[Any]:
    """The retraining and landing-scoring deployments, with their schedules and parameters."""
    from flows.landing import landing_flow
    from flows.train import train_flow

    settings = settings or ServeSettings()
    retrain = train_flow.to_deployment(
        name="nightly-retrain",
        cron=settings.train_cron,
        parameters={
            "data": settings.train_data,
            "settings": None
            if settings.train_settings is None
            else settings.train_settings.model_dump(mode="json"),
            # A retrain makes the same kind of model as the one it would replace.
            "reuse_champion_settings": settings.train_settings is None,
            "tracking_config": settings.tracking_config,
            "model_name": settings.model_name,
        },
        tags=["anomaly", "training"],
        description="Retrain on normal data; the new version becomes champion only if it passes the gate.",
        concurrency_limit=1,
    )
    score = landing_flow.to_deployment(
        name="score-landing",
        interval=settings.score_interval_seconds,
        parameters={
            "landing": settings.landing,
            "output_dir": settings.output_dir,
            "tracking_config": settings.tracking_config,
            "model_name": settings.model_name,
            "alerts": settings.alerts.model_dump(),
            "notification_block": settings.notification_block,
            "min_age_seconds": settings.min_age_seconds,
        },
        tags=["anomaly", "scoring"],
        description="Score new files in the landing folder with models:/NAME@champion, once each.",
        # One run at a time: the ledger has a single writer.
        concurrency_limit=1,
    )
    return [retrain, score]


def _schedule_text(deployment: Any) -> str:
    """When ``deployment``'s runs are due, in words, from its first schedule."""
    from datetime import datetime, timezone

    from prefect.server.schemas.schedules import CronSchedule

    schedule = deployment.schedules[0].schedule
    interval = getattr(schedule, "interval", None)
    if interval is not None:
        return f"now, then every {interval.total_seconds():.0f} s"
    cron = CronSchedule(cron=schedule.cron, timezone=schedule.timezone or "UTC")
    (due,) = asyncio.run(cron.get_dates(n=1, start=datetime.now(timezone.utc)))
    return f"{due.isoformat(timespec='minutes')} (cron {schedule.cron!r}, {cron.timezone})"


def serve_all(settings: ServeSettings | None = None) -> None:
    """Serve both deployments from this process until interrupted (Ctrl-C or SIGTERM).

    With no ``PREFECT_API_URL`` a local Prefect server is started for the process (Prefect's
    temporary one has no scheduler). The landing folder is scored once right after the
    deployments register, so files already waiting do not wait for the first interval.
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    from flows.local_server import prefect_api

    settings = settings or ServeSettings()
    for folder in (settings.landing, settings.output_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    with prefect_api(settings.output_dir) as api:
        deployments = build_deployments(settings)
        runner = Runner(pause_on_shutdown=not api.started_here)
        ids = {d.name: runner.add_deployment(d) for d in deployments}
        run_deployment(ids["score-landing"], timeout=0, as_subflow=False)
        where = (
            f"a local Prefect server started for this process at {api.api_url} "
            f"(UI {api.ui_url}; for the Prefect CLI: export PREFECT_API_URL={api.api_url})"
            if api.started_here
            else f"the Prefect API at {api.api_url}"
        )
        logger.info("Serving on %s", where)
        logger.info(
            "Watching landing folder %s; scores, rejects and the ledger go to %s",
            Path(settings.landing).resolve(),
            Path(settings.output_dir).resolve(),
        )
        for deployment in deployments:
            logger.info(
                "%s/%s: next runs %s",
                deployment.flow_name,
                deployment.name,
                _schedule_text(deployment),
            )
        logger.info("Stop with Ctrl-C")
        try:
            asyncio.run(runner.start())
        except (KeyboardInterrupt, TerminationSignal):
            pass
    logger.info("Stopped serving")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    serve_all()
