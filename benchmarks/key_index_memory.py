"""Peak memory of duplicate-key detection at N and 4N distinct keys: bounded index vs all in memory.

Feeds ``N`` and then ``4N`` distinct integer keys (plus a share of repeats, so lookups hit the
runs on disk) through :class:`anomaly.data.keys.KeyIndex` in batches of 64 Ki rows, as streaming
scoring does, each size in its own child process so each peak is its own. Reported per run:

- ``heap``: the peak of Python-tracked allocations (``tracemalloc``; numpy's buffers included),
- ``anon``: the peak anonymous RSS (``RssAnon`` of ``/proc/self/status``, sampled after each
  batch): memory the process owns, without the page cache behind memory-mapped runs,
- the time and rows/s of the lookups.

The same is measured with ``memory_keys`` large enough that nothing spills (the index as it
was: every key in memory), and the 4N/N ratios and differences are printed.

Run: python benchmarks/key_index_memory.py [--keys 2000000] [--memory-keys 1048576]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np
import pandas as pd

BATCH = 1 << 16


def _rss_anon() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def child(n: int, memory_keys: int) -> dict[str, float]:
    from anomaly.data.keys import KeyIndex

    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 7 + 3)
    # One row in 20 repeats a key seen earlier, so duplicates are found on disk as well.
    repeats = rng.integers(0, n, n // 20)
    ids = np.insert(ids, np.sort(repeats), ids[np.sort(repeats) // 2])
    rows = np.arange(len(ids), dtype=np.int64)
    with tempfile.TemporaryDirectory() as folder:
        index = KeyIndex(memory_keys=memory_keys, directory=folder)
        base_anon = _rss_anon()
        peak_anon = base_anon
        tracemalloc.start()
        started = time.perf_counter()
        found = 0
        for s in range(0, len(ids), BATCH):
            batch = pd.DataFrame({"reading_id": ids[s : s + BATCH]})
            found += int((index.earlier_rows(batch, rows[s : s + BATCH]) >= 0).sum())
            peak_anon = max(peak_anon, _rss_anon())
        seconds = time.perf_counter() - started
        _, heap = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        runs = index._index.n_runs
        index.close()
    return {
        "rows": len(ids),
        "duplicates": found,
        "heap": heap,
        "anon": peak_anon - base_anon,
        "seconds": seconds,
        "runs": runs,
    }


def measure(n: int, memory_keys: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(n), str(memory_keys)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=2_000_000, help="N distinct keys")
    parser.add_argument("--memory-keys", type=int, default=None, help="default: KeyIndex's")
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    from anomaly.data.key_index import DEFAULT_MEMORY_KEYS

    cap = args.memory_keys or DEFAULT_MEMORY_KEYS
    mib = 1024 * 1024
    print(f"N = {args.keys:,} distinct keys (+5% repeats), batches of {BATCH:,} rows")
    for label, memory_keys in (
        (f"bounded (memory_keys={cap:,})", cap),
        ("all in memory (no spill)", 1 << 40),
    ):
        small, large = measure(args.keys, memory_keys), measure(4 * args.keys, memory_keys)
        for size, r in (("N", small), ("4N", large)):
            print(
                f"{label:34s} {size:>2s}: {r['rows']:>11,.0f} rows, heap peak {r['heap'] / mib:7.1f} MiB, "
                f"anon RSS peak +{r['anon'] / mib:7.1f} MiB, {r['rows'] / r['seconds']:>11,.0f} rows/s, "
                f"{r['runs']} runs on disk, {r['duplicates']:,} duplicates"
            )
        print(
            f"{label:34s} 4N vs N: heap x{large['heap'] / small['heap']:.2f} "
            f"(+{(large['heap'] - small['heap']) / mib:.1f} MiB), anon RSS "
            f"+{(large['anon'] - small['anon']) / mib:.1f} MiB, rows/s x"
            f"{(large['rows'] / large['seconds']) / (small['rows'] / small['seconds']):.2f}"
        )


if __name__ == "__main__":
    main()
