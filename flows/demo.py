"""End-to-end demo on generated data of all three kinds: train, calibrate, log to MLflow, score.

For a table of sensor readings, two machines' sensor series and a folder of small images, it
trains a model under its own name (``demo-tabular``, ``demo-series``, ``demo-images``), scores a
batch with planted anomalies, and ends with one summary row per kind. Both flows run on
Prefect's ephemeral local API and a local SQLite MLflow store (``mlflow.yaml``); the sample data
is generated on first use (``data/generate.py``).

Run from the repository root: ``python -m flows.demo``
"""

from __future__ import annotations

import logging
import runpy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from anomaly.config import TrainSettings
from anomaly.file_scoring import context_path_for
from anomaly.pipeline import ScoreResult
from anomaly.tracking import TrackingConfig, ui_command
from flows.score import score_flow
from flows.train import train_flow

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
OUTPUTS = ROOT / "outputs"

# Small networks and few epochs: each kind trains and scores in well under a minute on 2 cores.
DEMO_SETTINGS = TrainSettings(
    detector={
        "categorical_columns": ["machine_type"],
        "key_columns": ["reading_id", "timestamp"],
        "epochs": 30,
        "batch_size": 256,
        "learning_rate": 5e-3,
    },
)
SERIES_SETTINGS = TrainSettings(
    detector={
        "model": "conv1d",
        "window": 32,
        "time_column": "timestamp",
        "series_column": "machine",
        # Carried through to the output so the demo can check the planted spans.
        "key_columns": ["injected_anomaly"],
        "epochs": 10,
        "batch_size": 64,
        "learning_rate": 3e-3,
    },
)
IMAGE_SETTINGS = TrainSettings(
    detector={
        "model": "conv",
        "conv_channels": [8, 16],
        "latent_dim": 8,
        "epochs": 20,
        "batch_size": 32,
        "learning_rate": 5e-3,
    },
)


@dataclass(frozen=True)
class Planted:
    """How the planted anomalies of a scored batch fared."""

    caught: int
    planted: int
    false_alarm_rate: float  # share of normal rows (points, images) flagged


def _tabular_truth(scored: pd.DataFrame, incoming: Path) -> Planted:
    truth = pd.read_parquet(incoming, columns=["reading_id", "injected_anomaly"])
    joined = scored.merge(truth, on="reading_id")
    planted = joined["injected_anomaly"] != "none"
    return Planted(
        int(joined.loc[planted, "is_anomaly"].sum()),
        int(planted.sum()),
        float(joined.loc[~planted, "is_anomaly"].mean()),
    )


def _series_truth(scored: pd.DataFrame, incoming: Path) -> Planted:
    """A planted span is caught when any of its points is flagged."""
    planted = scored["injected_anomaly"] != ""
    spans = scored.loc[planted].groupby(["machine", "injected_anomaly"])["is_anomaly"].any()
    return Planted(int(spans.sum()), len(spans), float(scored.loc[~planted, "is_anomaly"].mean()))


def _image_truth(scored: pd.DataFrame, incoming: Path) -> Planted:
    defect = scored["path"].map(lambda p: Path(p).name.startswith("defect_"))
    return Planted(
        int(scored.loc[defect, "is_anomaly"].sum()),
        int(defect.sum()),
        float(scored.loc[~defect, "is_anomaly"].mean()),
    )


@dataclass(frozen=True)
class DemoKind:
    """One kind of data the demo trains on and scores."""

    kind: str
    model_name: str
    train: Path
    incoming: Path
    settings: TrainSettings
    truth: Callable[[pd.DataFrame, Path], Planted]


KINDS = (
    DemoKind(
        "tabular",
        "demo-tabular",
        DATA / "sensors_train.parquet",
        DATA / "incoming",
        DEMO_SETTINGS,
        _tabular_truth,
    ),
    DemoKind(
        "time series",
        "demo-series",
        DATA / "series_train.parquet",
        DATA / "series_incoming",
        SERIES_SETTINGS,
        _series_truth,
    ),
    DemoKind(
        "images",
        "demo-images",
        DATA / "images_train",
        DATA / "images_incoming",
        IMAGE_SETTINGS,
        _image_truth,
    ),
)


@dataclass(frozen=True)
class DemoRun:
    kind: DemoKind
    result: ScoreResult
    planted: Planted
    seconds: float


def run_kind(kind: DemoKind) -> DemoRun:
    """Train ``kind``'s model under its own name, score its incoming batch, time both."""
    started = time.perf_counter()
    model = train_flow(data=str(kind.train), settings=kind.settings, model_name=kind.model_name)
    output = OUTPUTS / f"{kind.model_name}.scores.parquet"
    # Each demo scores its batch afresh: no context carried over from an earlier demo's run.
    context_path_for(output, kind.model_name).unlink(missing_ok=True)
    result = score_flow(
        data=str(kind.incoming),
        model_uri=model.model_uri,
        output=str(output),
        model_name=kind.model_name,
    )
    seconds = time.perf_counter() - started
    planted = kind.truth(pd.read_parquet(result.output), kind.incoming)
    return DemoRun(kind, result, planted, seconds)


def summary_table(runs: list[DemoRun]) -> Table:
    """One column per kind, one row per figure."""
    table = Table(title="anomaly demo: one model per kind")
    table.add_column("")
    for run in runs:
        table.add_column(run.kind.kind, overflow="fold")  # paths wrap rather than lose their end
    rows: dict[str, Callable[[DemoRun], str]] = {
        "model": lambda run: f"{run.result.model_name} v{run.result.model_version}",
        "threshold": lambda run: f"{run.result.threshold:.4g}",
        "scored": lambda run: f"{run.result.rows_scored} of {run.result.rows_in}",
        "rejected": lambda run: str(run.result.rows_rejected),
        "flagged": lambda run: (
            f"{run.result.rows_flagged} ({run.result.rows_flagged / max(run.result.rows_scored, 1):.1%})"
        ),
        "planted caught": lambda run: f"{run.planted.caught} of {run.planted.planted}",
        "false alarms": lambda run: f"{run.planted.false_alarm_rate:.1%}",
        "output": lambda run: str(Path(run.result.output).relative_to(ROOT)),
        "seconds": lambda run: f"{run.seconds:.1f}",
    }
    for label, cell in rows.items():
        table.add_row(label, *(cell(run) for run in runs))
    return table


def _start_prefect() -> float:
    """Start Prefect's ephemeral API before the first kind, so no kind's time includes it."""
    from prefect.client.orchestration import get_client

    started = time.perf_counter()
    with get_client(sync_client=True) as client:
        client.hello()
    return time.perf_counter() - started


def main() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    console = Console()
    if not all(p.exists() for kind in KINDS for p in (kind.train, kind.incoming)):
        console.print("[bold]Generating sample data[/] with data/generate.py")
        runpy.run_path(str(DATA / "generate.py"))["generate"](DATA)
    # The demo's networks are tiny: one thread trains them fastest, and on a machine whose cores
    # are busy with other work, torch's default of one thread per core made training ~10x slower.
    torch.set_num_threads(1)
    startup = _start_prefect()
    runs = [run_kind(kind) for kind in KINDS]

    console.print(summary_table(runs))
    console.print(
        "threshold: the 95th percentile of each model's held-out normal errors (about 5% false "
        "alarms expected; series points next to a planted span share its windows and add some). "
        "Planted: table rows, series spans (caught when any of its points is flagged), defect "
        f"images. seconds: training and scoring; Prefect's API started in {startup:.1f} s before."
    )
    console.print(f"MLflow UI: {ui_command(TrackingConfig.load(ROOT / 'mlflow.yaml'))}")
    tabular = runs[0].result
    scored = pd.read_parquet(tabular.output)
    truth = pd.read_parquet(KINDS[0].incoming, columns=["reading_id", "injected_anomaly"])
    top = scored.merge(truth, on="reading_id").nlargest(5, "anomaly_score")
    console.print("Most anomalous table rows (top_feature says which sensor broke most):")
    console.print(
        top[
            ["reading_id", "anomaly_score", "p_value", "top_feature", "injected_anomaly"]
        ].to_string(index=False)
    )


if __name__ == "__main__":
    main()
