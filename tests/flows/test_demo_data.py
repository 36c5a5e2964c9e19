"""The demo's sample data: small, and what each kind's reader expects under the demo's settings."""

import os
import runpy
from pathlib import Path

import numpy as np

from anomaly.data.images import ImageBatch
from anomaly.pipeline import read_training_data
from flows.demo import DATA, KINDS

ROOT = Path(__file__).parent.parent.parent


def test_generated_samples_are_small_and_each_demo_kind_reads_its_own(tmp_path):
    paths = runpy.run_path(str(ROOT / "data" / "generate.py"))["generate"](tmp_path)
    assert max(p.stat().st_size for p in paths) < 1_000_000
    assert sum(p.stat().st_size for p in paths) < 2_000_000
    read = {
        kind.kind: read_training_data(str(tmp_path / kind.train.relative_to(DATA)), kind.settings)
        for kind in KINDS
    }
    assert [kind.model_name for kind in KINDS] == ["demo-tabular", "demo-series", "demo-images"]
    table, series, images = read.values()
    assert len(table) == 6000 and (table["injected_anomaly"] == "none").all()
    assert series.groupby("machine").size().to_dict() == {"m0": 2400, "m1": 2400}
    assert (series["injected_anomaly"] == "").all()
    assert isinstance(images, ImageBatch) and images.images.shape == (400, 1, 16, 16)
    assert len(images.rejected) == 0
    # The incoming batches carry planted anomalies of each kind for the demo to count.
    incoming = {kind.kind: tmp_path / kind.incoming.relative_to(DATA) for kind in KINDS}
    series_batch = read_training_data(str(incoming["time series"]), KINDS[1].settings)
    assert series_batch["timestamp"].min() > series["timestamp"].max()
    assert series_batch.groupby("machine")["injected_anomaly"].nunique().to_dict() == {
        "m0": 3,  # "" and two planted kinds
        "m1": 3,
    }
    names = sorted(p.name for p in incoming["images"].iterdir())
    assert sum(n.startswith("defect_") for n in names) == 20 and len(names) == 100
    assert np.isin(
        ["batch_001.parquet", "batch_002.parquet"], os.listdir(incoming["tabular"])
    ).all()
