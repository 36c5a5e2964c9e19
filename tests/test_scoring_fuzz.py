"""Property: any DataFrame either scores with counts that add up or raises one of our named errors."""

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anomaly import AnomalyError, score_frame
from anomaly.data.synthetic import FEATURES
from tests.conftest import KEYS

NUMERIC = list(FEATURES)
special_floats = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e300, -1e300, 5e-324])
ordinary = st.floats(min_value=-1e4, max_value=1e4)
# one_of picks among its branches evenly: mostly ordinary readings, some hostile ones.
cell = st.one_of(
    ordinary,
    ordinary,
    ordinary,
    ordinary,
    special_floats,
    st.floats(allow_nan=True, allow_infinity=True),
)


@st.composite
def frames(draw):
    n = draw(st.integers(min_value=0, max_value=25))
    columns = {}
    for name in NUMERIC:
        # Mostly valid columns, so that many examples get past the schema check to the row policy.
        kind = draw(st.sampled_from(["float"] * 30 + ["int", "text", "null", "missing"]))
        if kind == "float":
            columns[name] = pd.Series(draw(st.lists(cell, min_size=n, max_size=n)), dtype="float64")
        elif kind == "int":
            columns[name] = pd.Series(
                draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n)), dtype="int64"
            )
        elif kind == "text":
            columns[name] = pd.Series(
                draw(st.lists(st.text(max_size=3), min_size=n, max_size=n)), dtype="object"
            )
        elif kind == "null":
            columns[name] = pd.Series([None] * n, dtype="object")
    machine = draw(
        st.sampled_from(["known", "known", "known", "unknown", "null", "numbers", "missing"])
    )
    if machine == "known":
        columns["machine_type"] = pd.Series(
            draw(st.lists(st.sampled_from(["pump", "turbine"]), min_size=n, max_size=n)),
            dtype="string",
        )
    elif machine == "unknown":
        columns["machine_type"] = pd.Series(
            draw(st.lists(st.text(max_size=4), min_size=n, max_size=n)), dtype="string"
        )
    elif machine == "null":
        columns["machine_type"] = pd.Series([None] * n, dtype="string")
    elif machine == "numbers":
        columns["machine_type"] = pd.Series(np.arange(n, dtype=float))
    if draw(st.integers(0, 4)):
        columns["reading_id"] = pd.Series(np.arange(n) % 3, dtype="int64")  # duplicate keys allowed
        columns["timestamp"] = pd.Series(pd.date_range("2026-01-01", periods=n, freq="s"))
    return pd.DataFrame(columns, index=pd.RangeIndex(n))


@settings(
    derandomize=True,  # the same examples on every CI run, so a failure reproduces
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames())
def test_scoring_either_accounts_for_every_row_or_raises_a_named_error(fitted_detector, frame):
    try:
        batch = score_frame(fitted_detector, frame, "m", "1")
    except AnomalyError as error:
        event(f"raised {type(error).__name__}: {str(error)[:40]}")
        return
    event("scored" if batch.n_scored else "all rows rejected or empty")
    assert batch.n_scored + batch.n_rejected == len(frame)
    assert np.isfinite(batch.scored["anomaly_score"]).all()
    assert ((batch.scored["p_value"] > 0) & (batch.scored["p_value"] <= 1)).all()
    assert (batch.rejected["reason"].str.len() > 0).all()
    assert set(KEYS) <= set(batch.scored.columns)
