"""Scoring runs: one per batch, and the per-version monitor run that charts batches over time."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from anomaly import plots
from anomaly.tracking.store import (
    CALIBRATION_LEVELS,
    KEY_TAG,
    LoadedModel,
    TrackingConfig,
    configure,
    finished_run,
    hash_key,
    log_figure,
)

if TYPE_CHECKING:
    from anomaly.monitoring import BatchReport
    from anomaly.scoring import BatchSummary

logger = logging.getLogger(__name__)


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
    if (done := finished_run(experiment_id, idempotency_key)) is not None:
        return done
    tags = {"anomaly.run_type": "scoring", "anomaly.model": f"{model.name}/{model.version}"}
    if idempotency_key:
        tags[KEY_TAG] = hash_key(idempotency_key)
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
                for lv in CALIBRATION_LEVELS
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
        log_figure(
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
            log_figure(
                plots.image_grid(
                    review.top_images,
                    review.top_reconstructions,
                    review.top_error_maps,
                    scores[review.top_rows] if review.top_scores is None else review.top_scores,
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
