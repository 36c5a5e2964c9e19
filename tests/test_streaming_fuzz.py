"""Property: streaming random Parquet files accounts for every row or raises a named error.

Every row of every file is scored, rejected with a reason, or in a file quarantined whole (listed
with its reason and row count); when a named error is raised instead, no output is left.

Random frames (every column kind Parquet stores, NaN and infinities, zero rows, missing and extra
columns, non-ASCII names) are written to a real Parquet file and scored with
:func:`anomaly.streaming.score_parquet` in small record batches, so that a file spans several
batches and a column can be null in one batch and not in the next.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anomaly import AnomalyError
from anomaly.data.synthetic import FEATURES
from anomaly.streaming import score_parquet

NUMERIC = list(FEATURES)
special = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300, 5e-324])
ordinary = st.floats(min_value=-1e4, max_value=1e4)
cell = st.one_of(ordinary, ordinary, ordinary, special, st.floats())
names = st.text(alphabet=st.sampled_from(list("aZ_ 09ßéµ温度Ω-\u200b")), min_size=1, max_size=6)


def column(draw, kind: str, n: int) -> pd.Series:
    """``n`` values of one column kind, as Parquet will store them."""
    if kind == "float":
        return pd.Series(draw(st.lists(cell, min_size=n, max_size=n)), dtype="float64")
    if kind == "float32":
        return pd.Series(draw(st.lists(cell, min_size=n, max_size=n)), dtype="float32")
    if kind == "int":
        return pd.Series(draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n)))
    if kind == "nullable_int":
        values = draw(
            st.lists(st.one_of(st.none(), st.integers(-100, 100)), min_size=n, max_size=n)
        )
        return pd.Series(values, dtype="Int64")
    if kind == "bool":
        return pd.Series(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    if kind == "text":
        return pd.Series(
            draw(st.lists(st.text(max_size=4), min_size=n, max_size=n)), dtype="string"
        )
    if kind == "datetime":
        return pd.Series(pd.date_range("2026-01-01", periods=n, freq="min"))
    if kind == "null":
        return pd.Series([None] * n, dtype="object")
    if kind == "null_head":  # null in the first rows only: typed in a later record batch
        head = draw(st.integers(0, n))
        return pd.Series([np.nan] * head + [1.0] * (n - head), dtype="float64")
    raise AssertionError(kind)


KINDS = ["float32", "int", "nullable_int", "bool", "text", "datetime", "null", "null_head"]


NUMERIC_KINDS = ["float"] * 12 + ["float32", "int", "nullable_int", "null", "null_head"]


@st.composite
def tables(draw) -> pd.DataFrame:
    n = draw(st.sampled_from([0, 1, 2, 5, 9, 17, 30]))
    # Most frames fit the schema, so that most examples reach the row policy and the writers;
    # the rest may break it anywhere (wrong types, missing columns, clashing names).
    hostile = draw(st.integers(0, 3)) == 0
    columns: dict[str, pd.Series] = {}
    for name in NUMERIC:
        kind = draw(st.sampled_from(NUMERIC_KINDS + ([*KINDS, "missing"] if hostile else [])))
        if kind != "missing":
            columns[name] = column(draw, kind, n)
    machine = draw(
        st.sampled_from(
            ["known"] * 6 + ["unknown", "null"] + (["int", "bool", "missing"] if hostile else [])
        )
    )
    if machine == "known":
        columns["machine_type"] = pd.Series(
            draw(st.lists(st.sampled_from(["pump", "turbine"]), min_size=n, max_size=n)),
            dtype="string",
        )
    elif machine == "unknown":
        columns["machine_type"] = column(draw, "text", n)
    elif machine != "missing":
        columns["machine_type"] = column(draw, machine, n)
    if not hostile or draw(st.booleans()):
        columns["reading_id"] = pd.Series(np.arange(n) % 4, dtype="int64")  # duplicate keys
    if not hostile or draw(st.booleans()):
        columns["timestamp"] = column(draw, draw(st.sampled_from(["datetime", "text"])), n)
    clashing = st.sampled_from(["reason", "anomaly_score", "source_row"])
    for _ in range(draw(st.integers(0, 3))):
        extra = draw(st.one_of(names, clashing) if hostile else names)
        if extra not in columns and extra not in ("reason", "source_row", "source_file"):
            columns[extra] = column(draw, draw(st.sampled_from(["float", *KINDS])), n)
        elif hostile and extra not in columns:
            columns[extra] = column(draw, "float", n)
    order = draw(st.permutations(list(columns)))
    return pd.DataFrame({k: columns[k] for k in order}, index=pd.RangeIndex(n))


@settings(
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    table=tables(),
    second=st.one_of(st.none(), st.none(), tables()),
    batch_rows=st.sampled_from([4, 7, 65_536]),
)
def test_streaming_accounts_for_every_row_or_raises_a_named_error(
    fitted_detector, table, second, batch_rows
):
    """One file, or a directory of two whose schemas may differ."""
    workdir = Path(tempfile.mkdtemp(prefix="anomaly-fuzz-"))
    try:
        inputs = workdir / "in"
        inputs.mkdir()
        files = [inputs / "a.parquet"]
        table.to_parquet(files[0], row_group_size=max(1, len(table) // 2))
        if second is not None:
            files.append(inputs / "b.parquet")
            second.to_parquet(files[1])
        source = files[0] if second is None else inputs
        out_dir = workdir / "out"
        try:
            result = score_parquet(
                fitted_detector,
                source,
                out_dir / "scored.parquet",
                out_dir / "rejects.parquet",
                model_name="m",
                model_version="1",
                batch_rows=batch_rows,
                progress=False,
            )
        except AnomalyError as error:
            event(f"raised {type(error).__name__}")
            left = sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else []
            assert left == [], f"files left behind after {error!r}: {left}"
            return
        rows = {str(f): pq.read_metadata(f).num_rows for f in files}
        assert sum(rows.values()) == len(table) + (0 if second is None else len(second))
        # A file set aside whole is listed with its reason and row count; the rest is scored.
        set_aside = {q.source_file: q for q in result.quarantined}
        assert all(q.reason.strip() and q.rows == rows[name] for name, q in set_aside.items())
        listed = pq.read_table(result.quarantine).to_pandas()
        assert sorted(listed["source_file"]) == sorted(set_aside)
        kept = {name: n for name, n in rows.items() if name not in set_aside}
        assert result.n_scored + result.n_rejected == sum(kept.values()) == result.n_rows
        assert result.n_rows + result.n_quarantined_rows == sum(rows.values())
        scored, rejected = pq.read_table(result.output), pq.read_table(result.rejects)
        assert (scored.num_rows, rejected.num_rows) == (result.n_scored, result.n_rejected)
        positions = sorted(
            zip(
                scored.column("source_file").to_pylist()
                + rejected.column("source_file").to_pylist(),
                scored.column("source_row").to_pylist() + rejected.column("source_row").to_pylist(),
                strict=True,
            )
        )
        expected = [(name, i) for name, n in kept.items() for i in range(n)]
        assert positions == sorted(expected)  # every row once, from the file it came from
        reasons = rejected.column("reason").to_pylist()
        assert all(isinstance(r, str) and r.strip() for r in reasons)
        scores = scored.column("anomaly_score").to_numpy()
        assert np.isfinite(scores).all()
        assert sorted(p.name for p in out_dir.iterdir()) == [
            "rejects.parquet",
            "scored.parquet",
            "scored.quarantine.parquet",
        ]
        event(f"{len(set_aside)} quarantined" if set_aside else "all files scored")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
