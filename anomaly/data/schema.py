"""Table schemas: which columns are features, of what kind, checked once at the boundary."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api import types as ptypes

from anomaly.errors import SchemaError

logger = logging.getLogger(__name__)

ColumnKind = Literal["numeric", "categorical"]

# The scored output's own columns, in order, after the model's key columns: the one spec the
# in-memory (pandas) and the streaming (Arrow) outputs are both built to, and a test holds them
# to it. Keys or input columns of these names would be overwritten, so they are refused up front.
SCORED_FIELDS: tuple[pa.Field, ...] = (
    pa.field("anomaly_score", pa.float64()),
    pa.field("p_value", pa.float64()),
    pa.field("is_anomaly", pa.bool_()),
    pa.field("threshold", pa.float64()),
    pa.field("model_name", pa.string()),
    pa.field("model_version", pa.string()),
    pa.field("top_feature", pa.string()),
    pa.field("top_feature_share", pa.float64()),
    pa.field("out_of_range", pa.string()),
    pa.field("duplicate_of_row", pa.int64()),
    pa.field("source_row", pa.int64()),
    pa.field("source_file", pa.string()),
)
OUTPUT_COLUMNS = tuple(f.name for f in SCORED_FIELDS)
SCORED_COLUMNS = frozenset(OUTPUT_COLUMNS)
REJECT_COLUMNS = frozenset({"reason", "source_row", "source_file"})


# A value counts as far outside the training range beyond this many training spans past the
# training minimum or maximum: the network never saw such inputs, so its reconstruction error
# there is an extrapolation, not evidence. Narrower would flag ordinary new extremes.
RANGE_MARGIN = 1.0


@dataclass(frozen=True)
class ColumnSpec:
    """One feature column as seen at fit time.

    ``low`` / ``high``: the smallest and largest finite value of a numeric feature among the
    normal rows the model was fitted on (None for categorical features and older models).
    """

    name: str
    kind: ColumnKind
    dtype: str
    low: float | None = None
    high: float | None = None

    def outside(self, values: np.ndarray, margin: float = RANGE_MARGIN) -> np.ndarray:
        """``(n,)`` bool: finite values more than ``margin`` training spans outside ``[low, high]``.

        A feature that was constant in training has no span: any other value is outside.
        """
        if self.low is None or self.high is None:
            return np.zeros(len(values), dtype=bool)
        span = self.high - self.low
        with np.errstate(invalid="ignore"):
            return np.isfinite(values) & (
                (values < self.low - margin * span) | (values > self.high + margin * span)
            )


def _is_categorical_dtype(dtype: Any) -> bool:
    return bool(
        ptypes.is_string_dtype(dtype)
        or ptypes.is_object_dtype(dtype)
        or isinstance(dtype, pd.CategoricalDtype)
        or ptypes.is_bool_dtype(dtype)
    )


def _is_numeric_dtype(dtype: Any) -> bool:
    return bool(ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype))


def _looks_like_id(series: pd.Series) -> bool:
    return bool(
        ptypes.is_integer_dtype(series.dtype)
        and len(series) > 10
        and series.is_monotonic_increasing
        and series.is_unique
    )


def as_frame(X: Any, *, copy: bool = True) -> pd.DataFrame:
    """Turn an array-like into a DataFrame; arrays get columns ``x0 .. x{d-1}``.

    Column labels become strings (a DataFrame built from an array has integer labels), since
    schemas, saved models and Parquet files name columns by string. With ``copy=False`` a
    frame built from an array shares its memory: for a caller that uses the frame and lets it
    go before returning (pandas copies the array by default, a pass over all of it).

    Raises
    ------
    SchemaError
        If an array is not 2-D.
    """
    if isinstance(X, pd.DataFrame):
        if all(isinstance(c, str) for c in X.columns):
            return X
        return X.rename(columns=str)
    array = np.asarray(X)
    if array.ndim != 2:
        raise SchemaError(
            f"expected a 2-D array (n_samples, n_features), found shape {array.shape}"
        )
    return pd.DataFrame(array, columns=[f"x{i}" for i in range(array.shape[1])], copy=copy)


@dataclass(frozen=True)
class TableSchema:
    """The feature and key columns a model was fitted on.

    Parameters
    ----------
    features : tuple of ColumnSpec
        Feature columns in model order: what the network sees, after encoding.
    keys : tuple of str
        Columns passed through to outputs untouched (ids, timestamps).
    """

    features: tuple[ColumnSpec, ...]
    keys: tuple[str, ...] = ()

    @property
    def numeric_columns(self) -> list[str]:
        return [c.name for c in self.features if c.kind == "numeric"]

    @property
    def categorical_columns(self) -> list[str]:
        return [c.name for c in self.features if c.kind == "categorical"]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.features]

    @classmethod
    def infer(
        cls,
        frame: pd.DataFrame,
        feature_columns: Sequence[str] | None = None,
        categorical_columns: Sequence[str] | None = None,
        key_columns: Sequence[str] = (),
        source: str | None = None,
    ) -> TableSchema:
        """Choose feature columns from ``frame``.

        Features are ``feature_columns`` when given, else every numeric column that is not a key,
        plus ``categorical_columns``. String, categorical and bool columns are categorical.
        """
        names = [str(c) for c in frame.columns]
        keys = tuple(str(k) for k in key_columns)
        categorical = [str(c) for c in (categorical_columns or [])]
        for column in [*keys, *categorical, *(feature_columns or [])]:
            if column not in frame.columns:
                raise SchemaError(
                    f"column '{column}' not found; columns present: {names}",
                    column=column,
                    source=source,
                )
        if feature_columns is None:
            chosen = [
                c
                for c in names
                if c not in keys and c not in categorical and _is_numeric_dtype(frame[c].dtype)
            ]
            for column in chosen:
                if _looks_like_id(frame[column]):
                    logger.warning(
                        "column '%s' looks like an id (unique, increasing integers) but is used as a feature; "
                        "pass it in key_columns if it is one",
                        column,
                    )
            chosen += [c for c in categorical if c not in chosen]
        else:
            chosen = [str(c) for c in feature_columns]
            chosen += [c for c in categorical if c not in chosen]
        taken = sorted(set(keys) & SCORED_COLUMNS)
        if taken:
            raise SchemaError(
                f"key column(s) {taken} have the name of a column the scored output adds; rename them",
                column=taken[0],
                source=source,
            )
        overlap = sorted(set(chosen) & set(keys))
        if overlap:
            raise SchemaError(
                f"columns {overlap} are both keys and features; a key is passed through, never modelled",
                column=overlap[0],
                source=source,
            )
        if not chosen:
            raise SchemaError(
                f"no feature columns: no numeric column besides the keys {list(keys)}; columns present: {names}",
                source=source,
            )
        specs = []
        for name in chosen:
            dtype = frame[name].dtype
            if name in categorical or _is_categorical_dtype(dtype):
                kind: ColumnKind = "categorical"
            elif _is_numeric_dtype(dtype):
                kind = "numeric"
            else:
                raise SchemaError(
                    f"column '{name}': expected a numeric or categorical feature, found {dtype}",
                    column=name,
                    source=source,
                )
            specs.append(ColumnSpec(name=name, kind=kind, dtype=str(dtype)))
        return cls(features=tuple(specs), keys=keys)

    def validate(
        self, frame: pd.DataFrame, source: str | None = None, require_keys: bool = True
    ) -> None:
        """Check ``frame`` has every feature (and key) column with a compatible type.

        Raises
        ------
        SchemaError
            Naming the first offending column, the type expected and the type found.
        """
        names = list(map(str, frame.columns))
        present = set(names)
        if len(present) != len(names):
            # Parquet allows it and pandas reads it, but a column name would then stand for two
            # columns: which one holds the feature cannot be told, so the file is refused whole.
            repeated = sorted({n for n in names if names.count(n) > 1})
            raise SchemaError(
                f"column name '{repeated[0]}' appears {names.count(repeated[0])} times; each "
                "column needs a name of its own",
                column=repeated[0],
                source=source,
            )
        wanted = [*self.keys] if require_keys else []
        for key in wanted:
            if key not in present:
                raise SchemaError(
                    f"missing key column '{key}': expected it to pass through to the output, found only {sorted(present)}",
                    column=key,
                    source=source,
                )
        for spec in self.features:
            if spec.name not in present:
                raise SchemaError(
                    f"missing column '{spec.name}': expected {spec.kind} ({spec.dtype}), found no such column",
                    column=spec.name,
                    source=source,
                )
            column = frame[spec.name]
            dtype = column.dtype
            if spec.kind == "numeric":
                # A column that is null throughout (a sensor down for a whole file) reads as a
                # null/object column: its rows are rejected per row, not the whole file.
                ok = _is_numeric_dtype(dtype) or bool(column.isna().all())
            else:
                # Categories stored as strings must still be strings; numeric codes stay numeric.
                fitted_on_codes = spec.dtype in _NUMERIC_DTYPE_NAMES
                ok = (
                    _is_categorical_dtype(dtype)
                    or (fitted_on_codes and _is_numeric_dtype(dtype))
                    or bool(column.isna().all())
                )
            if not ok:
                raise SchemaError(
                    f"column '{spec.name}': expected {spec.kind} ({spec.dtype}), found {dtype}",
                    column=spec.name,
                    source=source,
                )

    def with_ranges(self, frame: pd.DataFrame) -> TableSchema:
        """This schema with each numeric feature's finite range in ``frame`` (the fit rows)."""
        numeric = self.numeric_columns
        if not numeric:
            return self
        # One conversion of the numeric block; non-finite values are masked out of the extremes.
        values = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(values)
        if finite.all():
            lows, highs = values.min(axis=0), values.max(axis=0)
        else:
            lows = np.where(finite, values, np.inf).min(axis=0, initial=np.inf)
            highs = np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf)
        ranges = {
            name: (float(low), float(high))
            for name, low, high, seen in zip(numeric, lows, highs, finite.any(axis=0), strict=True)
            if seen
        }
        specs = [
            replace(spec, low=ranges[spec.name][0], high=ranges[spec.name][1])
            if spec.kind == "numeric" and spec.name in ranges
            else spec
            for spec in self.features
        ]
        return replace(self, features=tuple(specs))

    def out_of_range(self, frame: pd.DataFrame, margin: float = RANGE_MARGIN) -> np.ndarray:
        """Features of each row far outside the training range, ``(n,)`` object.

        Each entry is the comma-separated feature names (in model order), or None when every
        value is within ``margin`` training spans of the range seen at fit (see
        :data:`RANGE_MARGIN`). Missing and non-finite values are not counted.
        """
        numeric = [c for c in self.features if c.kind == "numeric" and c.low is not None]
        out = np.full(len(frame), None, dtype=object)
        if not numeric or not len(frame):
            return out
        outside = np.column_stack(
            [
                c.outside(frame[c.name].to_numpy(dtype=np.float64, na_value=np.nan), margin)
                for c in numeric
            ]
        )
        rows = np.flatnonzero(outside.any(axis=1))
        if len(rows):
            # One string per distinct pattern of features, not one per row.
            patterns, which = np.unique(outside[rows], axis=0, return_inverse=True)
            names = np.array([c.name for c in numeric], dtype=object)
            labels = np.array([", ".join(names[p]) for p in patterns], dtype=object)
            out[rows] = labels[which.ravel()]
        return out

    def to_dict(self) -> dict[str, Any]:
        features = []
        for c in self.features:
            spec: dict[str, Any] = {"name": c.name, "kind": c.kind, "dtype": c.dtype}
            if c.low is not None:
                spec |= {"low": c.low, "high": c.high}
            features.append(spec)
        return {"features": features, "keys": list(self.keys)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableSchema:
        return cls(
            features=tuple(ColumnSpec(**c) for c in data["features"]),
            keys=tuple(data.get("keys", ())),
        )


_NUMERIC_DTYPE_NAMES = frozenset(
    f"{kind}{bits}"
    for kind in ("int", "uint", "float", "Int", "UInt", "Float")
    for bits in (8, 16, 32, 64)
)


def invalid_rows(frame: pd.DataFrame, schema: TableSchema) -> tuple[np.ndarray, np.ndarray]:
    """Which rows cannot be scored as is, and why: ``(bad (n,) bool, reasons (n_bad,) object)``.

    Numeric features must be finite; categorical features must not be null. Reasons are built
    only for the bad rows, so a clean batch costs one pass over its features.
    """
    n = len(frame)
    bad_columns: list[tuple[str, np.ndarray]] = []
    numeric = schema.numeric_columns
    if numeric:
        # One conversion of the numeric block rather than one per column.
        non_finite = ~np.isfinite(frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan))
        for j in np.flatnonzero(non_finite.any(axis=0)):
            bad_columns.append((numeric[j], non_finite[:, j]))
    for name in schema.categorical_columns:
        bad = frame[name].isna().to_numpy()
        if bad.any():
            bad_columns.append((name, bad))
    any_bad = np.zeros(n, dtype=bool)
    for _, bad in bad_columns:
        any_bad |= bad
    if not bad_columns:
        return any_bad, np.array([], dtype=object)
    reasons = np.full(n, "", dtype=object)
    for name, bad in bad_columns:
        sep = np.where(reasons[bad] == "", "", ", ")
        reasons[bad] = reasons[bad] + sep + name
    return any_bad, "missing or non-finite value in " + reasons[any_bad]


def invalid_row_reasons(frame: pd.DataFrame, schema: TableSchema) -> pd.Series:
    """Why each row cannot be scored as is: ``""`` for a valid row, else a reason naming the columns.

    Numeric features must be finite; categorical features must not be null.
    """
    bad, why = invalid_rows(frame, schema)
    reasons = np.full(len(frame), "", dtype=object)
    reasons[bad] = why
    return pd.Series(reasons, index=frame.index, dtype=object)
