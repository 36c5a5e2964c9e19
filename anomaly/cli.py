"""Command line: ``anomaly train`` and ``anomaly score``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from anomaly.errors import AnomalyError

app = typer.Typer(
    help="Train autoencoder anomaly detectors on normal data and score new batches.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: Exception, verbose: bool) -> NoReturn:
    """Report an error as a message, not a traceback (unless --verbose), and exit with 2."""
    if verbose:
        console.print_exception()
    # The project's own errors already say what and where; others get their type for context.
    prefix = "" if isinstance(exc, AnomalyError) else f"{type(exc).__name__}: "
    console.print(f"[bold red]error:[/] {prefix}{exc}", highlight=False)
    raise typer.Exit(2) from exc


def _table(title: str, rows: dict[str, object]) -> Table:
    table = Table(title=title, show_header=False)
    for key, value in rows.items():
        table.add_row(key, str(value))
    return table


TrackingOpt = Annotated[
    Path | None,
    typer.Option("--tracking-config", help="mlflow.yaml to use (default ./mlflow.yaml)"),
]


@app.command()
def train(
    data: Annotated[str, typer.Argument(help="Normal data: a Parquet file, a directory or a glob")],
    config: Annotated[
        Path | None,
        typer.Option(help="YAML of TrainSettings (detector hyperparameters, quantile, splits)"),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Network family: dense, lstm_seq2seq or conv1d")
    ] = None,
    window: Annotated[
        int | None, typer.Option(help="Points per window: model a time series (CSV or Parquet)")
    ] = None,
    time_column: Annotated[str | None, typer.Option(help="Timestamp column of a series")] = None,
    series_column: Annotated[
        str | None, typer.Option(help="Series id column (several series, one model)")
    ] = None,
    features: Annotated[
        str | None,
        typer.Option(help="Comma-separated feature columns (default: all numeric non-key columns)"),
    ] = None,
    categorical: Annotated[
        str | None, typer.Option(help="Comma-separated categorical columns to one-hot encode")
    ] = None,
    keys: Annotated[
        str | None, typer.Option(help="Comma-separated key columns passed through to outputs")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum training epochs")] = None,
    quantile: Annotated[
        float | None, typer.Option(help="Threshold quantile of calibration errors")
    ] = None,
    nan_policy: Annotated[
        str | None, typer.Option(help="reject or impute rows with NaN/inf features")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps")] = None,
    run_name: Annotated[str | None, typer.Option(help="MLflow run name")] = None,
    tracking_config: TrackingOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Fit a detector on normal data, calibrate its threshold, log it to MLflow and register a version."""
    from anomaly.config import TrainSettings
    from anomaly.pipeline import train as run_train
    from anomaly.tracking import TrackingConfig

    _setup_logging(verbose)
    try:
        settings = TrainSettings.from_yaml(config) if config else TrainSettings()
        overrides = {
            "model": model,
            "window": window,
            "time_column": time_column,
            "series_column": series_column,
            "feature_columns": _split(features),
            "categorical_columns": _split(categorical),
            "key_columns": _split(keys),
            "epochs": epochs,
            "nan_policy": nan_policy,
            "device": device,
        }
        detector = settings.detector.model_copy(
            update={k: v for k, v in overrides.items() if v is not None}
        )
        settings = settings.model_copy(
            update={
                "detector": detector,
                **({"quantile": quantile} if quantile is not None else {}),
            }
        )
        settings = TrainSettings.model_validate(settings.model_dump())
        tracking = TrackingConfig.load(tracking_config)
        result = run_train(data, settings, tracking, run_name=run_name)
    except Exception as exc:
        _fail(exc, verbose)
    Console().print(
        _table(
            "Trained",
            {
                "model": f"{result.model.name} version {result.model.version}",
                "model uri": result.model.model_uri,
                "threshold": f"{result.threshold:.6g} (q={settings.quantile})",
                "training rows": result.n_rows,
                "calibration rows": result.n_calibration,
                "epochs run": result.epochs_run,
                "MLflow run": result.model.run_id,
            },
        )
    )


@app.command()
def score(
    data: Annotated[
        str, typer.Argument(help="Rows to score: a Parquet file, a directory or a glob")
    ],
    output: Annotated[Path, typer.Option(help="Scored Parquet file to write")],
    model_uri: Annotated[
        str, typer.Option(help="models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest")
    ] = "",
    rejects: Annotated[
        Path | None,
        typer.Option(
            help="Rejected rows (default: beside OUTPUT, scores.parquet -> scores.rejects.parquet)"
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, mps")] = "auto",
    context: Annotated[
        Path | None,
        typer.Option(
            help="Time series: file carrying the last points of each series to the next batch "
            "(default: beside OUTPUT, NAME.context.parquet)"
        ),
    ] = None,
    tracking_config: TrackingOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score new rows with a registered model; write scored and rejected rows; log the batch to MLflow."""
    from anomaly.pipeline import score as run_score
    from anomaly.tracking import TrackingConfig

    _setup_logging(verbose)
    try:
        tracking = TrackingConfig.load(tracking_config)
        uri = model_uri or tracking.latest_model_uri
        result = run_score(
            data,
            uri,
            str(output),
            tracking,
            rejects=str(rejects) if rejects else None,
            device=device,
            context=str(context) if context else None,
        )
    except Exception as exc:
        _fail(exc, verbose)
    Console().print(
        _table(
            "Scored",
            {
                "model": f"{result.model_name} version {result.model_version}",
                "threshold": f"{result.threshold:.6g}",
                "rows in": result.rows_in,
                "rows scored": result.rows_scored,
                "rows rejected": result.rows_rejected,
                "anomalies flagged": result.rows_flagged,
                "output": result.output,
                "rejects": result.rejects,
            },
        )
    )


if __name__ == "__main__":  # pragma: no cover
    app()
