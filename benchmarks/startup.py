"""Start-up of `anomaly score`: time to the first scored row and peak RSS, cold and warm cache.

Trains a tiny model into a temporary MLflow store (SQLite, local artifacts), then runs each of
these in a fresh child process, ``--repeats`` times, and prints the median:

- ``import torch``: the floor any scoring run pays (``python -c "import torch"``);
- ``score --help``: the command line alone;
- ``score, cold cache``: `anomaly score` on a small file with an empty model cache (the model
  is downloaded from the artifact store);
- ``score, warm cache``: the same with the model cached by an earlier run.

"First row" is when the scored output is complete and the MLflow logging starts: the input is
one small file (``--rows``), so all its rows are the first batch. It is read in the child by
wrapping the pipeline's logging call, timed from just before the child is started. ``total`` is
the child's whole wall time, logging included. Each figure is also given as a ratio to
``import torch`` measured in the same run, since the machine's speed (and load) varies.

Run: python benchmarks/startup.py [--repeats 3] [--rows 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run in the child: mark when the outputs are written (the logging call starts), then run the CLI.
_SCORE_DRIVER = """
import os, sys, time
import anomaly.pipeline as pipeline
t0 = float(os.environ["STARTUP_T0"])
log_scored = pipeline.log_scored
def timed(*args, **kwargs):
    print(f"FIRST_ROW {time.time() - t0:.4f}", file=sys.stderr, flush=True)
    return log_scored(*args, **kwargs)
pipeline.log_scored = timed
from anomaly.cli import app
app(sys.argv[1:])
"""


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float | None, int]:
    """(wall s, first-row s or None, peak RSS bytes) of one child process."""
    env = {**env, "STARTUP_T0": repr(time.time())}
    start = time.perf_counter()
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode not in (0,):
        raise SystemExit(f"{' '.join(args)} exited {proc.returncode}:\n{err[-3000:]}")
    first = next(
        (float(line.split()[1]) for line in err.splitlines() if line.startswith("FIRST_ROW")),
        None,
    )
    return wall, first, usage.ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()

    from anomaly.data.parquet import write_parquet_atomic
    from anomaly.data.synthetic import make_sensor_table

    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="anomaly-startup-") as tmp:
        work = Path(tmp)
        (work / "mlflow.yaml").write_text(
            "tracking_uri: sqlite:///startup.db\nartifact_location: artifacts\n"
            "experiment_name: startup\nregistered_model_name: startup-model\n"
        )
        write_parquet_atomic(make_sensor_table(3000, anomaly_fraction=0.0, seed=1), work / "t.pq")
        batch = make_sensor_table(args.rows, anomaly_fraction=0.05, seed=2, first_id=10_000)
        write_parquet_atomic(batch, work / "incoming" / "b.parquet")
        env = {
            k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "STARTUP_T0")
        }
        env |= {"PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
        cache = work / "cache"
        env["ANOMALY_CACHE_DIR"] = str(cache)
        cli = [py, "-m", "anomaly.cli"]
        train = [*cli, "train", "t.pq", "--categorical", "machine_type"]
        subprocess.run(
            [*train, "--keys", "reading_id,timestamp", "--epochs", "2"],
            cwd=work,
            env=env,
            check=True,
            capture_output=True,
        )
        score = [py, "-c", _SCORE_DRIVER, "score", "incoming", "--output", "out/s.parquet"]

        results: dict[str, list[tuple[float, float | None, int]]] = {}
        for _ in range(args.repeats):
            # Interleaved, so that a change in the machine's load touches every case alike.
            results.setdefault("import torch", []).append(
                _run([py, "-c", "import torch"], work, env)
            )
            results.setdefault("score --help", []).append(
                _run([*cli, "score", "--help"], work, env)
            )
            subprocess.run(["rm", "-rf", str(cache)], check=True)
            results.setdefault("score, cold cache", []).append(_run(score, work, env))
            results.setdefault("score, warm cache", []).append(_run(score, work, env))

    import torch

    base = statistics.median(w for w, _, _ in results["import torch"])
    print(
        f"# anomaly score start-up: {os.cpu_count()} cores, torch {torch.__version__}, "
        f"median of {args.repeats}, one file of {args.rows} rows, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'case':20s} {'first row s':>12s} {'x torch':>8s} {'total s':>8s} {'x torch':>8s} "
        f"{'peak RSS MiB':>13s}"
    )
    for name, runs in results.items():
        wall = statistics.median(w for w, _, _ in runs)
        firsts = [f for _, f, _ in runs if f is not None]
        first = statistics.median(firsts) if firsts else None
        rss = statistics.median(r for _, _, r in runs) / 2**20
        first_s = f"{first:12.2f} {first / base:8.2f}" if first is not None else f"{'':12s} {'':8s}"
        print(f"{name:20s} {first_s} {wall:8.2f} {wall / base:8.2f} {rss:13.0f}")


if __name__ == "__main__":
    main()
