"""Concurrent writers on one SQLite MLflow store: how many runs log cleanly, how many hit locks.

Each of N processes logs R runs as a scoring run does (start a run, a tag, six params, ten
metrics, a small text artifact, end the run) into the same ``sqlite:///`` store, all starting at
the same moment. Prints, per N: runs logged, runs that failed (with the error kinds, e.g.
``database is locked``), runs found in the store afterwards, and the median seconds per run
against one writer's (a ratio measured in the same invocation).

Run: python benchmarks/mlflow_sqlite_concurrency.py [--writers 1 2 4 8] [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

WORKER = r"""
import json, sys, time
import mlflow
from mlflow.tracking import MlflowClient
uri, experiment, runs, start, worker = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment(experiment)
while time.time() < start:
    time.sleep(0.005)
ok, errors, seconds = 0, [], []
for i in range(runs):
    t = time.perf_counter()
    try:
        with mlflow.start_run(run_name=f"w{worker}-{i}", tags={"worker": worker}):
            mlflow.log_params({f"p{k}": k for k in range(6)})
            mlflow.log_metrics({f"m{k}": float(k) for k in range(10)})
            mlflow.log_text("x", "note.txt")
        ok += 1
    except Exception as exc:  # every failure is counted, by kind
        errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    seconds.append(time.perf_counter() - t)
print(json.dumps({"ok": ok, "errors": errors, "seconds": seconds}))
"""


def run_round(uri: str, experiment: str, writers: int, runs: int) -> dict[str, object]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    # Start time far enough ahead that every interpreter has imported mlflow by then.
    start = time.time() + 8 + writers
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, uri, experiment, str(runs), str(start), str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for w in range(writers)
    ]
    ok, errors, seconds = 0, Counter(), []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            errors[f"worker exited {proc.returncode}: {err.strip().splitlines()[-1:]}"] += 1
            continue
        result = json.loads(out.strip().splitlines()[-1])
        ok += result["ok"]
        errors.update(result["errors"])
        seconds += result["seconds"]
    return {"ok": ok, "errors": errors, "median_s": statistics.median(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        mlflow.set_tracking_uri(uri)
        # Create the store and the experiment once, as a registered model's store already is.
        mlflow.create_experiment("concurrency", artifact_location=Path(tmp, "art").as_uri())
        baseline = None
        print(f"{'writers':>7} {'logged':>7} {'failed':>7} {'in store':>8} {'s/run':>7} {'x1':>6}")
        for writers in args.writers:
            before = len(mlflow.search_runs(experiment_names=["concurrency"]))
            result = run_round(uri, "concurrency", writers, args.runs)
            stored = len(mlflow.search_runs(experiment_names=["concurrency"])) - before
            median = float(result["median_s"])  # type: ignore[arg-type]
            baseline = baseline or median
            errors: Counter[str] = result["errors"]  # type: ignore[assignment]
            print(
                f"{writers:>7} {result['ok']:>7} {sum(errors.values()):>7} {stored:>8} "
                f"{median:>7.3f} {median / baseline:>6.2f}"
            )
            for kind, count in errors.most_common():
                print(f"        {count} x {kind}")


if __name__ == "__main__":
    main()
