"""The bad-input table: every case goes through the scoring path users run (score_files_to), beside
a good file, and must end scored, rejected with a reason, or quarantined with a reason; never a
crash, never a lost row, never a stopped run.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anomaly import AutoencoderDetector
from anomaly.data.synthetic import LABEL_COLUMN, make_blob_images, make_series_table
from anomaly.pipeline import score_files_to
from anomaly.tracking import LoadedModel
from tests.test_streaming import corrupt_row_group

GOOD_ROWS = 200


@dataclass(frozen=True)
class Case:
    name: str
    write: Callable[[Path, pd.DataFrame], None]  # writes the bad file(s) into a folder
    outcome: str  # "scored", "rejected" or "quarantined"
    detail: str  # expected in the reason (or, for "scored", in the column named by ``column``)
    column: str = "reason"


def _text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _truncated(path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_inside(path: Path, frame: pd.DataFrame) -> None:
    frame.to_parquet(path, row_group_size=50)
    corrupt_row_group(path, 2)


def _far_out(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.loc[out.index[7], "temperature"] = 1e9
    return out


def _nan_inf(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.loc[out.index[3], "pressure"] = np.nan
    out.loc[out.index[4], "pressure"] = np.inf
    out.loc[out.index[5], "rpm"] = -np.inf
    return out


def _duplicated_column(path: Path, frame: pd.DataFrame) -> None:
    # pandas refuses to write this; other tools do not: one name for two columns.
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table.append_column("power", pa.array(np.zeros(len(frame)))), path)


def _duplicate_keys(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[4]]], ignore_index=True)


TABLE_CASES = [
    Case(
        "missing column",
        lambda d, f: f.drop(columns="power").to_parquet(d / "bad.parquet"),
        "quarantined",
        "missing column 'power'",
    ),
    Case(
        "missing key column",
        lambda d, f: f.drop(columns="reading_id").to_parquet(d / "bad.parquet"),
        "quarantined",
        "missing key column 'reading_id'",
    ),
    Case(
        "duplicated column name",
        lambda d, f: _duplicated_column(d / "bad.parquet", f),
        "quarantined",
        "column name 'power' appears 2 times",
    ),
    Case(
        "extra columns",
        lambda d, f: f.assign(operator="ann", shift=3).to_parquet(d / "bad.parquet"),
        "scored",
        "",
    ),
    Case(
        "wrong dtype (text in a numeric column)",
        lambda d, f: f.astype({"power": str}).to_parquet(d / "bad.parquet"),
        "quarantined",
        "column 'power': expected numeric",
    ),
    Case(
        "column that is all null",
        lambda d, f: f.assign(power=None).to_parquet(d / "bad.parquet"),
        "rejected",
        "missing or non-finite value in power",
    ),
    Case(
        "NaN and ±inf",
        lambda d, f: _nan_inf(f).to_parquet(d / "bad.parquet"),
        "rejected",
        "missing or non-finite value in pressure",
    ),
    Case(
        "far outside the training range",
        lambda d, f: _far_out(f).to_parquet(d / "bad.parquet"),
        "scored",
        "temperature",
        column="out_of_range",
    ),
    Case(
        "empty file (0 bytes)",
        lambda d, f: (d / "bad.parquet").write_bytes(b""),
        "quarantined",
        "cannot read as Parquet",
    ),
    Case(
        "zero-row file",
        lambda d, f: f.iloc[:0].to_parquet(d / "bad.parquet"),
        "scored",
        "",
    ),
    Case(
        "truncated Parquet",
        lambda d, f: _truncated(d / "bad.parquet", f),
        "quarantined",
        "cannot read as Parquet",
    ),
    Case(
        "corrupt row group deep inside",
        lambda d, f: _corrupt_inside(d / "bad.parquet", f),
        "quarantined",
        "cannot read as Parquet",
    ),
    Case(
        "CSV with a .parquet name",
        lambda d, f: _text(d / "bad.parquet", f.to_csv(index=False)),
        "quarantined",
        "cannot read as Parquet",
    ),
    Case(
        "duplicate keys",
        lambda d, f: _duplicate_keys(f).to_parquet(d / "bad.parquet"),
        "scored",
        "4",
        column="duplicate_of_row",
    ),
    Case(
        "non-ASCII column names",
        lambda d, f: f.assign(**{"température_°C": 1.0, "名前": "x"}).to_parquet(d / "bad.parquet"),
        "scored",
        "",
    ),
    Case(
        "column the rejects output would overwrite",
        lambda d, f: f.assign(reason="x").to_parquet(d / "bad.parquet"),
        "quarantined",
        "would be overwritten",
    ),
    Case(
        "types that do not fit the other files'",
        lambda d, f: f.astype({"reading_id": str}).to_parquet(d / "bad.parquet"),
        "quarantined",
        "do not fit the earlier files'",
    ),
]


def file_rows(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:
        return None


def check_run(result, folder: Path, out: Path, bad_name: str, case: Case) -> pd.DataFrame:
    """Checks every case shares; returns the bad file's scored rows."""
    scored = pd.read_parquet(out / "scores.parquet")
    rejected = pd.read_parquet(out / "scores.rejects.parquet")
    quarantined = pd.read_parquet(out / "scores.quarantine.parquet")
    # Nothing lost: rows in = scored + rejected + rows of quarantined files.
    rows_in = sum(file_rows(p) or 0 for p in folder.iterdir())
    assert len(scored) + len(rejected) + result.n_quarantined_rows == rows_in
    assert (len(scored), len(rejected)) == (result.n_scored, result.n_rejected)
    assert rejected["reason"].str.len().gt(0).all()
    # The good file is always scored whole.
    assert scored["source_file"].str.endswith("good.parquet").sum() == GOOD_ROWS
    # No temporary files or half outputs left behind (only the outputs' empty lock files).
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "scores.parquet",
        "scores.quarantine.parquet",
        "scores.rejects.parquet",
    ]

    bad_scored = scored[scored["source_file"].str.endswith(bad_name)]
    bad_rejected = rejected[rejected["source_file"].str.endswith(bad_name)]
    if case.outcome == "quarantined":
        assert quarantined["source_file"].str.endswith(bad_name).tolist() == [True]
        assert case.detail in quarantined["reason"].iloc[0]
        assert bad_scored.empty and bad_rejected.empty
        assert [q.source_file for q in result.quarantined] == quarantined["source_file"].tolist()
    else:
        assert quarantined.empty
    if case.outcome == "rejected":
        assert len(bad_rejected) > 0
        assert bad_rejected["reason"].str.contains(case.detail, regex=False).any()
    if case.outcome == "scored":
        assert bad_rejected.empty
        assert len(bad_scored) == file_rows(folder / bad_name)
        if case.detail:
            assert bad_scored[case.column].astype(str).str.contains(case.detail).any()
    return bad_scored


@pytest.mark.parametrize("case", TABLE_CASES, ids=[c.name for c in TABLE_CASES])
def test_table_bad_input(case, tmp_path, fitted_detector, incoming_table):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    frame = incoming_table.iloc[GOOD_ROWS : GOOD_ROWS + 300].reset_index(drop=True)
    # Files are read in name order and the first sets the column types the others must fit.
    incoming_table.iloc[:GOOD_ROWS].to_parquet(folder / "a_good.parquet")
    case.write(folder, frame)
    model = LoadedModel(fitted_detector, "m", "1", "models:/m/1")
    result = score_files_to(model, str(folder), out / "scores.parquet")
    check_run(result, folder, out, "bad.parquet", case)


# ------------------------------------------------------------------------------------ time series
SERIES = {
    "model": "conv1d",
    "window": 16,
    "time_column": "timestamp",
    "series_column": "machine",
    "key_columns": [LABEL_COLUMN],
    "epochs": 8,
    "batch_size": 64,
    "verbose": False,
}


@pytest.fixture(scope="module")
def series_model() -> LoadedModel:
    detector = AutoencoderDetector(**SERIES).fit(make_series_table(800, seed=3))
    return LoadedModel(detector, "s", "1", "models:/s/1")


def _unsorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sample(frac=1.0, random_state=0)


def _duplicated_times(frame: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([frame, frame.iloc[[50, 60]]]).sort_values("timestamp")


def _gap(frame: pd.DataFrame) -> pd.DataFrame:
    # 10 points missing at row 100, then 8 points before a second gap: too short for a window.
    return pd.concat([frame.iloc[:100], frame.iloc[110:118], frame.iloc[140:]])


SERIES_CASES = [
    Case(
        "unsorted timestamps", lambda d, f: _unsorted(f).to_parquet(d / "b.parquet"), "scored", ""
    ),
    Case(
        "duplicated timestamps",
        lambda d, f: _duplicated_times(f).to_parquet(d / "b.parquet"),
        "rejected",
        "duplicate timestamp",
    ),
    Case(
        "gaps (a stretch between gaps shorter than the window)",
        lambda d, f: _gap(f).to_parquet(d / "b.parquet"),
        "rejected",
        "has 8 consecutive points here",
    ),
    Case(
        "series shorter than the window",
        # A new series (no points from earlier files to continue from) of 5 points.
        lambda d, f: f.iloc[:5].assign(machine="m9").to_parquet(d / "b.parquet"),
        "rejected",
        "series 'm9' has 5 consecutive points here",
    ),
    Case(
        "missing column",
        lambda d, f: f.drop(columns="pressure").to_parquet(d / "b.parquet"),
        "quarantined",
        "missing column 'pressure'",
    ),
    Case(
        "truncated file",
        lambda d, f: _truncated(d / "b.parquet", f),
        "quarantined",
        "cannot read as Parquet",
    ),
]


@pytest.mark.parametrize("case", SERIES_CASES, ids=[c.name for c in SERIES_CASES])
def test_series_bad_input(case, tmp_path, series_model):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    table = make_series_table(600, seed=5, start="2024-01-02")
    # Files are scored in name order, so the good file comes first and the bad one continues it.
    table.iloc[:GOOD_ROWS].to_parquet(folder / "a_good.parquet")
    case.write(folder, table.iloc[GOOD_ROWS:].reset_index(drop=True))
    result = score_files_to(series_model, str(folder), out / "scores.parquet")
    good = [pd.read_parquet(out / f"scores{s}.parquet") for s in ("", ".rejects")]
    assert sum(f["source_file"].str.endswith("a_good.parquet").sum() for f in good) == GOOD_ROWS
    check_series_run(result, folder, out, case)


def check_series_run(result, folder: Path, out: Path, case: Case) -> None:
    scored = pd.read_parquet(out / "scores.parquet")
    rejected = pd.read_parquet(out / "scores.rejects.parquet")
    quarantined = pd.read_parquet(out / "scores.quarantine.parquet")
    rows_in = sum(file_rows(p) or 0 for p in folder.iterdir())
    assert len(scored) + len(rejected) + result.n_quarantined_rows == rows_in
    assert rejected["reason"].str.len().gt(0).all()
    bad = rejected[rejected["source_file"].str.endswith("b.parquet")]
    if case.outcome == "quarantined":
        assert quarantined["source_file"].str.endswith("b.parquet").tolist() == [True]
        assert case.detail in quarantined["reason"].iloc[0]
    elif case.outcome == "rejected":
        assert quarantined.empty and bad["reason"].str.contains(case.detail).any()
    else:
        assert quarantined.empty and bad.empty


# ----------------------------------------------------------------------------------------- images
IMAGE_SIZE = (16, 16)


@pytest.fixture(scope="module")
def image_model() -> LoadedModel:
    images = make_blob_images(120, IMAGE_SIZE, seed=1)[:, 0]
    detector = AutoencoderDetector(
        model="conv", conv_channels=(8, 16), latent_dim=8, epochs=5, verbose=False, device="cpu"
    ).fit(images)
    return LoadedModel(detector, "i", "1", "models:/i/1")


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return buffer.getvalue()


def _bomb(side: int) -> bytes:
    # A real PNG declaring side x side pixels in a few kB: refused from the header, not decoded.
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


BLOB = (make_blob_images(1, IMAGE_SIZE, seed=9)[0, 0] * 255).astype(np.uint8)
IMAGE_CASES = [
    ("zero bytes", lambda: b"", "rejected", "empty image (0 bytes)"),
    ("truncated", lambda: png(BLOB)[:-40], "rejected", "corrupt or truncated image"),
    ("header only", lambda: png(BLOB)[:40], "rejected", "not a recognised image"),
    ("not an image", lambda: b"hello, world", "rejected", "not a recognised image"),
    ("wrong mode (RGBA)", lambda: png(np.dstack([BLOB] * 4)), "scored", ""),
    ("wrong mode (palette)", lambda: png(BLOB, "P"), "scored", ""),
    ("wrong size", lambda: png(np.kron(BLOB, np.ones((3, 2), np.uint8))), "scored", ""),
    # Over our 50-megapixel limit (default max_pixels), under Pillow's own bomb check.
    ("image bomb (100 MP)", lambda: _bomb(10_000), "rejected", "exceeds the limit of 50000000"),
    # Far over both: Pillow refuses it on opening, which becomes the same kind of reason.
    ("image bomb (1.6 GP)", lambda: _bomb(40_000), "rejected", "exceeds the pixel limit"),
]


@pytest.mark.parametrize(
    "name, make, outcome, detail", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES]
)
def test_image_bad_input(name, make, outcome, detail, tmp_path, image_model):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(3):
        (folder / f"good{i}.png").write_bytes(png(BLOB))
    (folder / "bad.png").write_bytes(make())
    result = score_files_to(image_model, str(folder), out / "scores.parquet")
    scored = pd.read_parquet(out / "scores.parquet")
    rejected = pd.read_parquet(out / "scores.rejects.parquet")
    assert len(scored) + len(rejected) == 4 == result.n_rows
    assert scored["path"].str.contains("good").sum() == 3
    if outcome == "rejected":
        (reason,) = rejected.loc[rejected["path"].str.endswith("bad.png"), "reason"]
        assert detail in reason
    else:
        assert rejected.empty and np.isfinite(scored["anomaly_score"]).all()


def test_an_image_parquet_file_without_the_image_column_is_quarantined(tmp_path, image_model):
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    pq.write_table(pa.table({"image": [png(BLOB)] * 3}), folder / "a.parquet")
    pq.write_table(pa.table({"picture": [png(BLOB)] * 2}), folder / "b.parquet")
    result = score_files_to(image_model, str(folder), out / "scores.parquet")
    assert (result.n_scored, result.n_rejected, result.n_quarantined_rows) == (3, 0, 2)
    listed = pd.read_parquet(out / "scores.quarantine.parquet")
    assert listed["reason"].str.startswith("missing column 'image'").tolist() == [True]


def test_a_model_fitted_on_non_ascii_column_names_scores_and_writes_them(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 1))
    frame = pd.DataFrame(
        {
            "température_°C": base[:, 0] + 0.1 * rng.normal(size=400),
            "débit_m³": 2 * base[:, 0] + 0.1 * rng.normal(size=400),
            "圧力": -base[:, 0] + 0.1 * rng.normal(size=400),
        }
    )
    detector = AutoencoderDetector(epochs=3, verbose=False).fit(frame)
    broken = frame.iloc[:20].copy()
    broken.loc[broken.index[5], "débit_m³"] = 1e4
    (tmp_path / "in").mkdir()
    broken.to_parquet(tmp_path / "in" / "b.parquet")
    model = LoadedModel(detector, "ü", "1", "models:/ü/1")
    result = score_files_to(model, str(tmp_path / "in"), tmp_path / "out" / "scores.parquet")
    scored = pd.read_parquet(tmp_path / "out" / "scores.parquet")
    assert result.n_scored == 20
    assert scored.loc[5, "top_feature"] == "débit_m³" == scored.loc[5, "out_of_range"]
