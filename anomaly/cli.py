"""Command line: ``anomaly train``, ``score``, ``log-run``, ``threshold set`` and ``serve``."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from anomaly.errors import AnomalyError, NotLoggedError

if TYPE_CHECKING:
    from anomaly.monitoring import GateResult
    from anomaly.pipeline import ScoreResult

app = typer.Typer(
    help="Train autoencoder anomaly detectors on normal data and score new batches.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _image_size(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        height, width = (int(v) for v in value.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter(f"expected HEIGHTxWIDTH such as 28x28, got {value!r}") from exc
    return height, width


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A busy store makes MLflow log each failed query with a full traceback at ERROR; the retries
    # and the final "scored, not logged" say it in one line each (--verbose shows the rest).
    if not verbose:
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


ModelNameOpt = Annotated[
    str | None,
    typer.Option(
        "--model-name",
        help="Registered model to use (default: registered_model_name in mlflow.yaml); "
        "one name per kind of model, e.g. sensors, vibration-series, parts-images",
    ),
]

# Exit status of a scoring run that quarantined some input files (2 is a run that failed).
PARTIAL_FAILURE_EXIT = 3
# Exit status of a run whose outputs are complete but whose MLflow run could not be logged.
NOT_LOGGED_EXIT = 4


def _settings_error(exc: Exception) -> str | None:
    """A pydantic validation error as one line per setting: its name, the problem, the value."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return None
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{where}: {error.get('msg', 'invalid')} (got {error.get('input')!r})")
    return "invalid settings: " + "; ".join(parts)


def _fail(exc: Exception, verbose: bool) -> NoReturn:
    """Report an error as a message, not a traceback (unless --verbose), and exit with 2."""
    if verbose:
        console.print_exception()
    # The project's own errors already say what and where; others get their type for context.
    prefix = "" if isinstance(exc, AnomalyError) else f"{type(exc).__name__}: "
    message = _settings_error(exc) or f"{prefix}{exc}"
    console.print(f"[bold red]error:[/] {message}", highlight=False)
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
    data: Annotated[
        str,
        typer.Argument(
            help="Normal data: a Parquet file, a directory or a glob (images: a folder of PNG/JPEG or Parquet with image bytes)"
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option(help="YAML of TrainSettings (detector hyperparameters, quantile, splits)"),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Network family: dense, lstm_seq2seq, conv1d or conv (images)"),
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
    threshold: Annotated[
        str | None,
        typer.Option(help="quantile (conformal) or pot (a generalized Pareto tail fit)"),
    ] = None,
    nan_policy: Annotated[
        str | None, typer.Option(help="reject or impute rows with NaN/inf features")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1, mps")] = None,
    image_size: Annotated[
        str | None,
        typer.Option(help="Images: HEIGHTxWIDTH to resize to (default: the first image's size)"),
    ] = None,
    channels: Annotated[int | None, typer.Option(help="Images: 1 (grayscale) or 3 (RGB)")] = None,
    image_column: Annotated[
        str | None, typer.Option(help="Images in Parquet: the column of encoded image bytes")
    ] = None,
    allow_inconclusive: Annotated[
        bool,
        typer.Option(
            "--allow-inconclusive",
            help="Promote the version even when its hold-out is too small for the gate to tell "
            "(gate.allow_inconclusive); the first version of a name is promoted anyway",
        ),
    ] = False,
    run_name: Annotated[str | None, typer.Option(help="MLflow run name")] = None,
    model_name: ModelNameOpt = None,
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
            "image_size": _image_size(image_size),
            "channels": channels,
            "image_column": image_column,
            "threshold": threshold,
        }
        detector = settings.detector.model_copy(
            update={k: v for k, v in overrides.items() if v is not None}
        )
        settings = settings.model_copy(
            update={
                "detector": detector,
                **({"quantile": quantile} if quantile is not None else {}),
                **(
                    {"gate": settings.gate.model_copy(update={"allow_inconclusive": True})}
                    if allow_inconclusive
                    else {}
                ),
            }
        )
        settings = TrainSettings.model_validate(settings.model_dump())
        tracking = TrackingConfig.load(tracking_config, model_name)
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
                "promotion gate": _gate_line(result.gate),
                "MLflow run": result.model.run_id,
            },
        )
    )


@app.command()
def score(
    data: Annotated[
        str,
        typer.Argument(
            help="What to score: a Parquet file, a directory or a glob; time series: Parquet or "
            "CSV; images: a folder of PNG/JPEG, or Parquet with image bytes"
        ),
    ],
    output: Annotated[Path, typer.Option(help="Scored Parquet file to write")],
    model_uri: Annotated[
        str,
        typer.Option(
            help="models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest "
            "(default models:/NAME@champion)"
        ),
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
    dask: Annotated[
        bool, typer.Option("--dask", help="Score on a local Dask cluster (one worker per core)")
    ] = False,
    dask_address: Annotated[
        str | None,
        typer.Option(help="Score on an existing Dask cluster: its scheduler, tcp://HOST:8786"),
    ] = None,
    heatmaps: Annotated[
        bool,
        typer.Option(help="Images: write flagged images' error maps as PNG beside OUTPUT"),
    ] = False,
    log_attempts: Annotated[
        int,
        typer.Option(
            min=1, help="Tries at logging the run to MLflow (a busy store), 2 s apart and doubling"
        ),
    ] = 3,
    model_name: ModelNameOpt = None,
    tracking_config: TrackingOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Score new rows with a registered model; write scored and rejected rows; log the batch to MLflow.

    Files that cannot be scored (not Parquet, truncated, a column missing) are listed in
    OUTPUT's .quarantine.parquet with the reason while the others are scored; the command
    then exits with status 3. When the outputs are complete but MLflow refuses the run after
    retries (a locked store), it exits with status 4: log it later with `anomaly log-run OUTPUT`.
    """
    from anomaly.pipeline import ScoreResult
    from anomaly.pipeline import score as run_score
    from anomaly.tracking import TrackingConfig

    _setup_logging(verbose)
    not_logged: NotLoggedError | None = None
    try:
        tracking = TrackingConfig.load(tracking_config, model_name)
        uri = model_uri or tracking.champion_model_uri
        result = run_score(
            data,
            uri,
            str(output),
            tracking,
            rejects=str(rejects) if rejects else None,
            device=device,
            context=str(context) if context else None,
            dask=dask,
            dask_address=dask_address,
            heatmaps=heatmaps,
            log_attempts=log_attempts,
        )
    except NotLoggedError as exc:
        if not isinstance(exc.result, ScoreResult):
            _fail(exc, verbose)
        not_logged, result = exc, exc.result
    except Exception as exc:
        _fail(exc, verbose)
    _print_scored(result)
    if not_logged is not None:
        console.print(f"[bold red]{not_logged}[/]", highlight=False)
        raise typer.Exit(NOT_LOGGED_EXIT)
    if result.partial:
        console.print(
            f"[bold yellow]partial failure:[/] {len(result.quarantined)} file(s) not scored; "
            "the other files' outputs are complete",
            highlight=False,
        )
        raise typer.Exit(PARTIAL_FAILURE_EXIT)


def _print_scored(result: ScoreResult) -> None:
    Console().print(
        _table(
            "Scored",
            {
                "model": f"{result.model_name} version {result.model_version}",
                "threshold": f"{result.threshold:.6g}",
                "rows in": result.rows_in,
                "rows scored": result.rows_scored,
                "rows rejected": result.rows_rejected,
                "rows in quarantined files": result.rows_quarantined,
                "anomalies flagged": result.rows_flagged,
                "output": result.output,
                "rejects": result.rejects,
                "quarantine": result.quarantine,
                "entries not read": len(result.skipped),
                "MLflow run": result.run_id or "not logged",
                **(
                    {"anomaly events": f"{result.n_events} closed, {result.n_open_events} open"}
                    if result.n_events or result.n_open_events
                    else {}
                ),
            },
        )
    )
    for path, reason in result.skipped:
        console.print(f"[yellow]not read:[/] {path}: {reason}", highlight=False)
    for file, reason in result.quarantined:
        console.print(f"[bold yellow]quarantined:[/] {file}: {reason}", highlight=False)


@app.command("log-run")
def log_run(
    output: Annotated[Path, typer.Argument(help="Scored output of a run that was not logged")],
    tracking_config: TrackingOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Log a scoring run that ended "scored, not logged" (exit 4), from the record beside OUTPUT.

    The record (OUTPUT's .unlogged.json) holds the run's counts and model version; the scores
    are read back from OUTPUT. A run logged already is found again, not logged twice.
    """
    from anomaly.run_logging import log_unlogged_run
    from anomaly.tracking import TrackingConfig

    _setup_logging(verbose)
    try:
        run_id = log_unlogged_run(output, TrackingConfig.load(tracking_config))
    except Exception as exc:
        _fail(exc, verbose)
    console.print(f"logged {output} as MLflow run {run_id}", highlight=False)


def _gate_line(gate: GateResult | None) -> str:
    return "not run" if gate is None else gate.summary()


threshold_app = typer.Typer(help="Review a registered model's threshold.", no_args_is_help=True)
app.add_typer(threshold_app, name="threshold")


@threshold_app.command("set")
def threshold_set(
    model_uri: Annotated[
        str, typer.Argument(help="models:/NAME/VERSION (or @ALIAS, /latest) to start from")
    ],
    reason: Annotated[str, typer.Option(help="Why the threshold changes (recorded for audit)")],
    quantile: Annotated[
        float | None, typer.Option(help="New quantile of the stored calibration errors")
    ] = None,
    value: Annotated[float | None, typer.Option(help="New threshold value")] = None,
    by: Annotated[str | None, typer.Option(help="Who changes it (default: the OS user)")] = None,
    champion: Annotated[
        bool, typer.Option("--champion", help="Also make the new version the champion")
    ] = False,
    tracking_config: TrackingOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Recompute the threshold from the stored calibration errors and register a new version.

    The source version stays as it was; the new one records who changed it and why.
    """
    from anomaly.registry import change_threshold
    from anomaly.tracking import CHAMPION, TrackingConfig

    _setup_logging(verbose)
    try:
        if (quantile is None) == (value is None):
            raise ValueError("give exactly one of --quantile or --value")
        tracking = TrackingConfig.load(tracking_config)
        registered, old, new = change_threshold(
            model_uri,
            tracking,
            reason,
            quantile=quantile,
            value=value,
            changed_by=by,
            alias=CHAMPION if champion else None,
        )
    except Exception as exc:
        _fail(exc, verbose)
    Console().print(
        _table(
            "Threshold changed",
            {
                "from": model_uri,
                "new version": registered.model_uri,
                "threshold": f"{old:.6g} -> {new:.6g}",
                "champion": "moved to the new version" if champion else "unchanged",
                "MLflow run": registered.run_id,
            },
        )
    )


@threshold_app.command("show")
def threshold_show(
    model_uri: Annotated[
        str,
        typer.Argument(
            help="models:/NAME/VERSION, models:/NAME@ALIAS or models:/NAME/latest "
            "(default: the champion of --model-name)"
        ),
    ] = "",
    last: Annotated[int, typer.Option(min=1, help="How many recent scoring runs to list")] = 10,
    model_name: ModelNameOpt = None,
    tracking_config: TrackingOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Show a version's threshold: quantile, calibration, expected false-positive rate, recent batches."""
    from anomaly.review import threshold_report
    from anomaly.tracking import TrackingConfig

    _setup_logging(verbose)
    try:
        tracking = TrackingConfig.load(tracking_config, model_name)
        report = threshold_report(model_uri or tracking.champion_model_uri, tracking, last=last)
    except Exception as exc:
        _fail(exc, verbose)
    out = Console()
    out.print(
        _table(
            f"Threshold of {report.model_uri}",
            {
                "threshold": f"{report.threshold:.6g} ({report.kind})",
                "quantile": f"{report.quantile:.4g}",
                "expected false-positive rate": f"{report.expected_rate:.2%} of normal rows",
                "calibration rows": report.calibration_size,
                "smallest rate they resolve": f"{report.resolution:.2%} (1 / (n + 1))",
            },
        )
    )
    levels = Table(title="Calibration errors")
    levels.add_column("quantile", justify="right")
    levels.add_column("error", justify="right")
    for level, value in report.calibration_quantiles:
        levels.add_row(f"{level:g}", f"{value:.6g}")
    out.print(levels)
    batches = Table(title=f"Last {len(report.recent)} scoring runs (newest first)")
    for name in ("run", "started", "rows scored", "flagged"):
        batches.add_column(name, justify="left" if name in ("run", "started") else "right")
    for batch in report.recent:
        batches.add_row(
            batch.run_name, batch.started, str(batch.rows_scored), f"{batch.anomaly_rate:.2%}"
        )
    out.print(batches if report.recent else "no scoring runs of this version yet")


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(help="YAML of ServeSettings (paths, schedules, train settings, alerts)"),
    ] = None,
    landing: Annotated[str | None, typer.Option(help="Landing folder to watch")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Folder for scored files")] = None,
    train_data: Annotated[str | None, typer.Option(help="Normal data to retrain on")] = None,
    model_name: ModelNameOpt = None,
    tracking_config: TrackingOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve the nightly retraining and landing-folder scoring deployments from this process.

    Uses the Prefect API at PREFECT_API_URL, or starts a local Prefect server for this process
    (its URL is printed, for the UI and the Prefect CLI). The landing folder is scored at start,
    then on schedule. Stop with Ctrl-C.
    """
    import yaml

    _setup_logging(verbose)
    try:
        # Imported by name at call time: the library and the other commands never import
        # Prefect, and `mypy anomaly` stays on the library (flows are checked by their tests).
        # Importing flows sets the process defaults (telemetry off, a longer server start).
        deployments = importlib.import_module("flows.deployments")
        ServeSettings, serve_all = deployments.ServeSettings, deployments.serve_all

        data = yaml.safe_load(config.read_text()) or {} if config else {}
        overrides = {
            "landing": landing,
            "output_dir": output_dir,
            "train_data": train_data,
            "model_name": model_name,
            "tracking_config": None if tracking_config is None else str(tracking_config),
        }
        settings = ServeSettings(**(data | {k: v for k, v in overrides.items() if v is not None}))
    except Exception as exc:
        _fail(exc, verbose)
    try:
        serve_all(settings)
    except AnomalyError as exc:
        _fail(exc, verbose)


if __name__ == "__main__":  # pragma: no cover
    app()
