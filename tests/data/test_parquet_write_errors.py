"""A failed write names the output it concerns, and replaces nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_full_disk_names_the_output_and_leaves_no_temporary(tmp_path, incoming_table):
    data = tmp_path / "in.parquet"
    incoming_table.to_parquet(data)
    out = tmp_path / "out" / "scores.parquet"
    # The file-size limit makes every write past 64 KiB fail with EFBIG ("File too large"),
    # the error a full disk or quota gives, in a child process so the suite is not limited.
    script = textwrap.dedent(
        f"""
        import resource, signal
        import pandas as pd
        from anomaly.data.parquet import write_parquet_atomic
        from anomaly.errors import OutputWriteError
        frame = pd.read_parquet({str(data)!r})
        frame = pd.concat([frame] * 20, ignore_index=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        try:
            write_parquet_atomic(frame, {str(out)!r})
        except OutputWriteError as exc:
            print("ERROR", exc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"ERROR {out}: cannot write this output" in proc.stdout
    assert "File too large" in proc.stdout
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir()] == []
