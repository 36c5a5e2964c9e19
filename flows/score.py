"""Scoring flow: score new Parquet data with a registered model, write scored and rejected rows, log the batch."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed, State

from anomaly.pipeline import ScoreResult, check_output_path, context_path_for, score_files_to
from anomaly.run_logging import log_scored
from anomaly.scoring import BatchSummary
from anomaly.streaming import StreamResult
from anomaly.tracking import LoadedModel, TrackingConfig, load_registered_detector
from flows import PARTIAL_FAILURE_STATE, ReportedFailure, retry_unless_bad_input


class ScoreRunFailed(ReportedFailure):
    """What ``result()`` raises for a scoring run that quarantined files; ``result`` is its record."""

    def __init__(self, message: str, result: ScoreResult):
        super().__init__(message, result)
        self.result = result


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
def score_data(
    model: LoadedModel,
    data: str,
    output: str,
    rejects: str | None,
    dask: bool,
    dask_address: str | None,
    context: str,
    heatmaps: bool = False,
) -> StreamResult:
    # Scoring and writing are one step: rows stream from the inputs to the outputs, never all
    # in memory; the outputs appear (atomically) only once every row is accounted for.
    return score_files_to(
        model,
        data,
        output,
        rejects,
        dask=dask,
        dask_address=dask_address,
        context_path=context,
        heatmaps=heatmaps,
    )


# No Prefect retries: log_scored retries a busy store itself under one key, so a retry cannot
# log the batch twice, and when the store keeps refusing it leaves a record for `anomaly log-run`.
@task(cache_policy=NO_CACHE)
def log_batch(
    batch: BatchSummary,
    model: LoadedModel,
    data: str,
    output: str,
    rejects: str,
    tracking: TrackingConfig,
) -> str:
    return log_scored(batch, model, data, output, rejects, tracking)


@flow(name="anomaly-score", log_prints=True)
def score_flow(
    data: str = "data/incoming",
    model_uri: str | None = None,
    output: str = "outputs/scores.parquet",
    rejects: str | None = None,
    tracking_config: str | None = None,
    device: str = "auto",
    context: str | None = None,
    dask: bool = False,
    dask_address: str | None = None,
    heatmaps: bool = False,
    model_name: str | None = None,
) -> ScoreResult | State[Any]:
    """Score every Parquet file under ``data`` with ``model_uri`` (default: ``models:/NAME@champion``).

    A file that cannot be scored (not Parquet, truncated, a column missing or of the wrong type)
    is quarantined: listed with its reason beside the output while the other files are scored.
    The run then ends in a Failed state named ``PartialFailure``; its ``result()`` raises a
    :class:`ScoreRunFailed` whose ``result`` is the run's :class:`ScoreResult`.

    ``context``: for a time-series model, the file that carries the last points of each series
    from one run to the next (default: beside ``output``). ``dask`` spreads the work over a
    local Dask cluster; ``dask_address`` over an existing one. For an image model ``data`` is an
    image folder or Parquet files with image bytes; ``heatmaps`` writes the flagged images'
    error maps as PNG files beside the output.
    """
    check_output_path(output)
    tracking = TrackingConfig.load(tracking_config, model_name)
    model = load_model(model_uri or tracking.champion_model_uri, tracking, device)
    context = context or str(context_path_for(output, model.name))
    batch = score_data(model, data, output, rejects, dask, dask_address, context, heatmaps)
    out, rej = str(batch.output), str(batch.rejects)
    run_id = log_batch(batch, model, data, out, rej, tracking)
    result = ScoreResult.of(batch, model, out, rej, run_id, batch.quarantine)
    rows = [
        {"item": "model", "value": f"{model.name} v{model.version}"},
        {"item": "threshold", "value": f"{result.threshold:.6g}"},
        {"item": "rows in", "value": result.rows_in},
        {"item": "rows scored", "value": result.rows_scored},
        {"item": "rows rejected", "value": result.rows_rejected},
        {"item": "rows in quarantined files", "value": result.rows_quarantined},
        {
            "item": "anomalies flagged",
            "value": f"{result.rows_flagged} ({batch.anomaly_rate:.1%})",
        },
        {"item": "output", "value": out},
        {"item": "rejects", "value": rej},
        {"item": "quarantine", "value": str(batch.quarantine)},
    ]
    rows += [
        {"item": f"QUARANTINED {file}", "value": reason} for file, reason in result.quarantined
    ]
    create_table_artifact(
        key="anomaly-score-summary",
        table=rows,
        description=f"Scoring of `{data}` with `{model.model_uri}`",
    )
    if result.partial:
        message = f"{len(result.quarantined)} file(s) quarantined, the rest scored: " + "; ".join(
            f"{file}: {reason}" for file, reason in result.quarantined
        )
        return Failed(
            name=PARTIAL_FAILURE_STATE, message=message, data=ScoreRunFailed(message, result)
        )
    return result
