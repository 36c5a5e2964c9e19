"""Scoring flow: score new Parquet data with a registered model, write scored and rejected rows, log the batch."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from anomaly.pipeline import (
    ScoreResult,
    check_output_path,
    context_path_for,
    score_files,
    write_outputs,
)
from anomaly.scoring import ScoredBatch
from anomaly.tracking import LoadedModel, TrackingConfig, load_registered_detector, log_scoring_run
from flows import retry_unless_bad_input


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def load_model(model_uri: str, tracking: TrackingConfig, device: str) -> LoadedModel:
    return load_registered_detector(model_uri, tracking, device=device)


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def score_data(model: LoadedModel, data: str, context: str) -> ScoredBatch:
    return score_files(model, data, context)


@task(
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_unless_bad_input,
    cache_policy=NO_CACHE,
)
def write(batch: ScoredBatch, output: str, rejects: str | None) -> tuple[str, str]:
    out, rej = write_outputs(batch, output, rejects)
    return str(out), str(rej)


# No retries: a retry after a partial failure would log the batch twice.
@task(cache_policy=NO_CACHE)
def log_batch(
    batch: ScoredBatch,
    model: LoadedModel,
    data: str,
    output: str,
    rejects: str,
    tracking: TrackingConfig,
) -> str:
    return log_scoring_run(batch, model, data, output, rejects, tracking)


@flow(name="anomaly-score", log_prints=True)
def score_flow(
    data: str = "data/incoming",
    model_uri: str | None = None,
    output: str = "outputs/scores.parquet",
    rejects: str | None = None,
    tracking_config: str | None = None,
    device: str = "auto",
    context: str | None = None,
) -> ScoreResult:
    """Score every Parquet file under ``data`` with ``model_uri`` (default: ``models:/NAME@champion``).

    ``context``: for a time-series model, the file that carries the last points of each series
    from one run to the next (default: beside ``output``).
    """
    check_output_path(output)
    tracking = TrackingConfig.load(tracking_config)
    model = load_model(model_uri or tracking.champion_model_uri, tracking, device)
    batch = score_data(model, data, context or str(context_path_for(output, model.name)))
    out, rej = write(batch, output, rejects)
    run_id = log_batch(batch, model, data, out, rej, tracking)
    result = ScoreResult.of(batch, model, out, rej, run_id)
    create_table_artifact(
        key="anomaly-score-summary",
        table=[
            {"item": "model", "value": f"{model.name} v{model.version}"},
            {"item": "threshold", "value": f"{result.threshold:.6g}"},
            {"item": "rows in", "value": result.rows_in},
            {"item": "rows scored", "value": result.rows_scored},
            {"item": "rows rejected", "value": result.rows_rejected},
            {
                "item": "anomalies flagged",
                "value": f"{result.rows_flagged} ({batch.anomaly_rate:.1%})",
            },
            {"item": "output", "value": out},
            {"item": "rejects", "value": rej},
        ],
        description=f"Scoring of `{data}` with `{model.model_uri}`",
    )
    return result
