"""End-to-end demo on generated sensor data: train, calibrate, log to MLflow, score a batch.

Runs both flows on Prefect's ephemeral local API and a local SQLite MLflow store
(``mlflow.yaml``), then prints what happened and how to look at it.

Run from the repository root: ``python -m flows.demo``
"""

from __future__ import annotations

import logging
import runpy
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from anomaly.config import TrainSettings
from anomaly.tracking import TrackingConfig, ui_command
from flows.score import score_flow
from flows.train import train_flow

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"

DEMO_SETTINGS = TrainSettings(
    detector={"categorical_columns": ["machine_type"], "key_columns": ["reading_id", "timestamp"]},
)


def main() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    console = Console()
    train_file, incoming = DATA / "sensors_train.parquet", DATA / "incoming"
    if not (train_file.exists() and incoming.is_dir()):
        console.print("[bold]Generating sample data[/] with data/generate.py")
        runpy.run_path(str(DATA / "generate.py"))["generate"](DATA)

    model = train_flow(data=str(train_file), settings=DEMO_SETTINGS)
    output = ROOT / "outputs" / "incoming.scores.parquet"
    result = score_flow(data=str(incoming), model_uri=model.model_uri, output=str(output))

    scored = pd.read_parquet(result.output)
    truth = pd.read_parquet(incoming, columns=["reading_id", "injected_anomaly"])
    joined = scored.merge(truth, on="reading_id")
    planted = joined["injected_anomaly"] != "none"
    table = Table(title="anomaly demo", show_header=False)
    rows = {
        "model": f"{result.model_name} version {result.model_version}",
        "threshold": f"{result.threshold:.5g} (95th percentile of held-out normal errors)",
        "rows scored": f"{result.rows_scored} of {result.rows_in} ({result.rows_rejected} rejected)",
        "anomalies flagged": f"{result.rows_flagged} ({result.rows_flagged / max(result.rows_scored, 1):.1%})",
        "planted anomalies caught": f"{int(joined.loc[planted, 'is_anomaly'].sum())} of {int(planted.sum())}",
        "false alarms on normal rows": f"{joined.loc[~planted, 'is_anomaly'].mean():.1%} (expected about 5%)",
        "output": str(Path(result.output).relative_to(ROOT)),
        "rejects": str(Path(result.rejects).relative_to(ROOT)),
        "MLflow UI": ui_command(TrackingConfig.load(ROOT / "mlflow.yaml")),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    console.print(table)
    top = joined.nlargest(5, "anomaly_score")
    console.print("Most anomalous rows (top_feature says which sensor broke most):")
    console.print(
        top[
            ["reading_id", "anomaly_score", "p_value", "top_feature", "injected_anomaly"]
        ].to_string(index=False)
    )


if __name__ == "__main__":
    main()
