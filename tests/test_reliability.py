"""Crashes leave no partial output, reruns reproduce it, and runs side by side do not collide.

Real processes killed with SIGKILL, real Parquet, a real SQLite MLflow store; nothing mocked.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from anomaly import AutoencoderDetector
from anomaly.data.parquet import file_sha256, output_lock
from anomaly.data.synthetic import LABEL_COLUMN, make_sensor_table, make_series_table
from anomaly.pipeline import rejects_path_for, score_files_to
from anomaly.tracking import LoadedModel, load_registered_detector, log_training_run

KEYS = ["reading_id", "timestamp"]
QUICK = {"epochs": 3, "batch_size": 256, "verbose": False}

# Scores with a detector saved on disk, as `anomaly score` does once the model is downloaded.
SCORE_SCRIPT = """
import sys
from anomaly.detectors import AutoencoderDetector
from anomaly.pipeline import score_files_to
from anomaly.tracking import LoadedModel
detector_dir, data, output = sys.argv[1:4]
context = sys.argv[4] if len(sys.argv) > 4 else None
detector = AutoencoderDetector.load(detector_dir, device="cpu")
score_files_to(LoadedModel(detector, "m", "1", "models:/m/1"), data, output, context_path=context)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def _temporaries(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp")) if folder.exists() else []


def _kill_while_writing(args: list[str], out: Path, min_bytes: int = 0) -> list[Path]:
    """Start a scoring process, SIGKILL it once a hidden temporary of ``out`` or its rejects
    file holds ``min_bytes``.

    Returns the temporaries it left behind (the proof it died part way through writing).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", SCORE_SCRIPT, *args],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            # Only the outputs' temporaries: a context file's (written atomically too) is not one.
            tmps = list(out.parent.glob(f".{out.stem}.*.tmp"))
            if any(t.stat().st_size >= min_bytes for t in tmps if t.exists()):
                break
            if proc.poll() is not None:
                pytest.fail(
                    f"scoring ended (rc {proc.returncode}) before it was killed: {proc.stderr.read()[-2000:]}"
                )  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no temporary output appeared"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return _temporaries(out.parent)


def _check_every_row_once(scored: pd.DataFrame, rejected: pd.DataFrame, sizes: dict[str, int]):
    """Rows in = scored + rejected, and each (source_file, source_row) appears exactly once."""
    assert len(scored) + len(rejected) == sum(sizes.values())
    seen = pd.concat(
        [scored[["source_file", "source_row"]], rejected[["source_file", "source_row"]]]
    )
    assert not seen.duplicated().any()
    for name, n in sizes.items():
        rows = seen.loc[seen["source_file"] == name, "source_row"]
        assert sorted(rows) == list(range(n)), name


def _read(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out), pd.read_parquet(rejects_path_for(out))


@pytest.fixture(scope="module")
def quick_detector() -> AutoencoderDetector:
    normal = make_sensor_table(2000, anomaly_fraction=0.0, seed=21)
    return AutoencoderDetector(categorical_columns=["machine_type"], key_columns=KEYS, **QUICK).fit(
        normal
    )


@pytest.fixture(scope="module")
def many_files(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """240,000 rows in 120 files (one record batch each, so scoring takes a few seconds)."""
    folder = tmp_path_factory.mktemp("many") / "in"
    folder.mkdir()
    frame = make_sensor_table(240_000, anomaly_fraction=0.05, seed=22)
    frame.loc[frame.index % 997 == 0, "pressure"] = np.nan  # some rows to reject
    sizes = {}
    for i in range(120):
        path = folder / f"part{i:03d}.parquet"
        frame.iloc[i * 2000 : (i + 1) * 2000].to_parquet(path)
        sizes[str(path)] = 2000
    return folder, sizes


def test_killed_run_leaves_no_output_and_the_rerun_matches_a_clean_run(
    tmp_path, quick_detector, many_files
):
    folder, sizes = many_files
    saved = tmp_path / "model"
    quick_detector.save(saved)
    model = LoadedModel(AutoencoderDetector.load(saved, device="cpu"), "m", "1", "models:/m/1")
    out = tmp_path / "out" / "scores.parquet"

    # Killed once a few batches are in the temporary file, long before the run could finish.
    left = _kill_while_writing([str(saved), str(folder), str(out)], out, min_bytes=64_000)
    assert not out.exists() and not rejects_path_for(out).exists()
    assert left and all(
        t.name.startswith((".scores.parquet.", ".scores.rejects.parquet.")) for t in left
    )

    result = score_files_to(model, str(folder), out)
    assert _temporaries(out.parent) == []  # the killed run's temporaries are gone
    scored, rejected = _read(out)
    assert (result.n_rows, result.n_rejected) == (len(scored) + len(rejected), len(rejected))
    assert len(rejected) > 0
    _check_every_row_once(scored, rejected, sizes)

    clean = tmp_path / "clean" / "scores.parquet"
    score_files_to(model, str(folder), clean)
    clean_scored, clean_rejected = _read(clean)
    pd.testing.assert_frame_equal(scored, clean_scored)
    pd.testing.assert_frame_equal(rejected, clean_rejected)

    # Idempotent: the same input and model again give the same table, not appended rows.
    score_files_to(model, str(folder), out)
    again_scored, again_rejected = _read(out)
    pd.testing.assert_frame_equal(scored, again_scored)
    pd.testing.assert_frame_equal(rejected, again_rejected)


SERIES = {
    "window": 16,
    "time_column": "timestamp",
    "series_column": "machine",
    "key_columns": [LABEL_COLUMN],
    **QUICK,
}


def test_killed_series_run_leaves_the_context_as_it_was(tmp_path):
    detector = AutoencoderDetector(**SERIES).fit(make_series_table(1000, n_series=2, seed=23))
    saved = tmp_path / "model"
    detector.save(saved)
    model = LoadedModel(AutoencoderDetector.load(saved, device="cpu"), "m", "1", "models:/m/1")
    earlier = tmp_path / "earlier" / "a.parquet"
    earlier.parent.mkdir()
    make_series_table(500, n_series=4, seed=24).to_parquet(earlier)
    batch = make_series_table(60_000, n_series=4, seed=25, start="2024-01-02")
    batch.loc[batch.index % 1009 == 0, "flow"] = np.nan
    data = tmp_path / "in" / "b.parquet"
    data.parent.mkdir()
    batch.to_parquet(data)

    out_dir = tmp_path / "out"
    out, context = out_dir / "scores.parquet", out_dir / "m.context.parquet"
    # The context after an earlier batch: the killed run must neither advance nor damage it.
    score_files_to(model, str(earlier.parent), out_dir / "earlier.parquet", context_path=context)
    before = file_sha256(context)
    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    shutil.copy(context, clean_dir / context.name)

    left = _kill_while_writing([str(saved), str(data), str(out), str(context)], out)
    assert left and not out.exists() and not rejects_path_for(out).exists()
    assert file_sha256(context) == before

    score_files_to(model, str(data), out, context_path=context)
    assert _temporaries(out_dir) == []
    scored, rejected = _read(out)
    assert len(rejected) > 0
    _check_every_row_once(scored, rejected, {str(data): len(batch)})
    assert file_sha256(context) != before  # the context moves on once the outputs are in place

    clean = clean_dir / "scores.parquet"
    score_files_to(model, str(data), clean, context_path=clean_dir / context.name)
    clean_scored, clean_rejected = _read(clean)
    pd.testing.assert_frame_equal(scored, clean_scored)
    pd.testing.assert_frame_equal(rejected, clean_rejected)
    assert file_sha256(clean_dir / context.name) == file_sha256(context)

    # Idempotent: the context keeps the points before the last batch, so that batch again
    # (now after the advanced context) reproduces its scores.
    score_files_to(model, str(data), out, context_path=context)
    again_scored, again_rejected = _read(out)
    pd.testing.assert_frame_equal(scored, again_scored)
    pd.testing.assert_frame_equal(rejected, again_rejected)


@pytest.fixture
def small_input(tmp_path) -> Path:
    path = tmp_path / "in" / "a.parquet"
    path.parent.mkdir()
    make_sensor_table(3000, anomaly_fraction=0.05, seed=26).to_parquet(path)
    return path


def test_next_run_removes_stale_temporaries_of_its_outputs_only(
    tmp_path, quick_detector, small_input
):
    out = tmp_path / "out" / "scores.parquet"
    out.parent.mkdir()
    stale = [out.parent / ".scores.parquet.0f0f.tmp", out.parent / ".scores.rejects.parquet.1a.tmp"]
    other = out.parent / ".other.parquet.2b.tmp"  # another output's: not this run's to remove
    for path in [*stale, other]:
        path.write_bytes(b"PAR1 half written")
    model = LoadedModel(quick_detector, "m", "1", "models:/m/1")
    score_files_to(model, str(small_input), out)
    assert not any(p.exists() for p in stale)
    assert other.exists()
    assert len(pd.read_parquet(out)) + len(pd.read_parquet(rejects_path_for(out))) == 3000


def test_a_held_lock_protects_a_live_writers_temporary_and_the_next_run_waits(
    tmp_path, quick_detector, small_input, caplog
):
    out = tmp_path / "out" / "scores.parquet"
    out.parent.mkdir()
    live = out.parent / ".scores.parquet.live.tmp"
    model = LoadedModel(quick_detector, "m", "1", "models:/m/1")
    errors: list[BaseException] = []

    def second_run() -> None:
        try:
            score_files_to(model, str(small_input), out)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="anomaly.data.parquet")
    with output_lock(out):
        live.write_bytes(b"PAR1 being written")
        thread = threading.Thread(target=second_run)
        thread.start()
        deadline = time.monotonic() + 30
        while "waiting for its lock" not in caplog.text:
            assert time.monotonic() < deadline, "the second run did not wait for the lock"
            time.sleep(0.01)
        time.sleep(0.2)
        assert live.exists() and not out.exists()  # nothing touched while the lock is held
    thread.join(60)
    assert not errors and not thread.is_alive()
    assert str(out.parent / ".scores.parquet.lock") in caplog.text
    assert not live.exists()  # once the holder is gone, what it left is stale
    assert len(pd.read_parquet(out)) + len(pd.read_parquet(rejects_path_for(out))) == 3000


def test_two_runs_writing_one_output_take_turns(tmp_path, quick_detector, many_files, caplog):
    """Two threads score different inputs into the same output: one complete result, not a mix."""
    folder, _ = many_files
    inputs = [str(folder / "part00*.parquet"), str(folder / "part01*.parquet")]
    model = LoadedModel(quick_detector, "m", "1", "models:/m/1")
    alone = []
    for i, data in enumerate(inputs):
        score_files_to(model, data, tmp_path / f"alone{i}" / "scores.parquet")
        alone.append(_read(tmp_path / f"alone{i}" / "scores.parquet"))

    out = tmp_path / "shared" / "scores.parquet"
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(data: str) -> None:
        try:
            start.wait()
            score_files_to(model, data, out)
        except BaseException as exc:
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="anomaly.data.parquet")
    threads = [threading.Thread(target=run, args=(d,)) for d in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert "waiting for its lock" in caplog.text  # they did meet, and one waited
    scored, rejected = _read(out)
    matches = [
        scored.equals(s) and rejected.reset_index(drop=True).equals(r.reset_index(drop=True))
        for s, r in alone
    ]
    assert sum(matches) == 1, "the output is not exactly one run's complete result"
    assert _temporaries(out.parent) == []


# Scores through the CLI with a registered model, as a scheduled job would.
def _score_cli(data: Path, output: Path, config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from anomaly.cli import app; app()",
            "score",
            str(data),
            "--output",
            str(output),
            "--model-uri",
            "models:/test-detector/1",
            "--tracking-config",
            str(config),
            "--device",
            "cpu",
        ],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_two_scoring_runs_at_once_share_a_model_and_an_sqlite_store(
    tmp_path, quick_detector, tracking_config
):
    normal = make_sensor_table(2000, anomaly_fraction=0.0, seed=21)
    registered = log_training_run(quick_detector, normal, "normal.parquet", tracking_config)
    assert registered.version == "1"
    config = tmp_path / "mlflow.yaml"
    config.write_text(yaml.safe_dump(tracking_config.model_dump()))
    inputs = []
    for i, n in enumerate((30_000, 20_000)):
        path = tmp_path / f"in{i}" / "batch.parquet"
        path.parent.mkdir()
        frame = make_sensor_table(n, anomaly_fraction=0.05, seed=30 + i, first_id=100_000 * i)
        frame.loc[frame.index % 499 == 0, "power"] = np.inf
        frame.to_parquet(path)
        inputs.append((path, n))

    outs = [tmp_path / f"out{i}" / "scores.parquet" for i in range(2)]
    procs = [_score_cli(path, out, config) for (path, _), out in zip(inputs, outs, strict=True)]
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for proc, log in zip(procs, logs, strict=True):
        assert proc.returncode == 0, log[-3000:]
        assert "database is locked" not in log

    # Each equals what the same model gives on that input alone.
    model = load_registered_detector("models:/test-detector/1", tracking_config, device="cpu")
    for (path, n), out in zip(inputs, outs, strict=True):
        scored, rejected = _read(out)
        _check_every_row_once(scored, rejected, {str(path): n})
        alone = tmp_path / "alone" / out.parent.name / "scores.parquet"
        score_files_to(model, str(path), alone)
        alone_scored, alone_rejected = _read(alone)
        pd.testing.assert_frame_equal(scored, alone_scored)
        pd.testing.assert_frame_equal(rejected, alone_rejected)

    runs = MlflowClient(tracking_config.tracking_uri).search_runs(
        [MlflowClient(tracking_config.tracking_uri).get_experiment_by_name("tests").experiment_id],
        filter_string="tags.`anomaly.run_type` = 'scoring'",
    )
    by_output = {r.data.params["output"]: r for r in runs}
    assert set(by_output) == {str(o) for o in outs}
    for (_, n), out in zip(inputs, outs, strict=True):
        run = by_output[str(out)]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["rows_in"] == n
        assert run.data.metrics["rows_rejected"] == len(pd.read_parquet(rejects_path_for(out)))
