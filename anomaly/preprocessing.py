"""Feature preprocessing with scikit-learn, fitted on normal rows only and saved without pickle."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

from anomaly.data.schema import TableSchema
from anomaly.errors import ModelFileError, NotFittedError

logger = logging.getLogger(__name__)

ScalerName = Literal["standard", "minmax"]

# Types a saved preprocessor may contain. skops refuses anything else, so a tampered file
# cannot smuggle in an arbitrary callable.
_TRUSTED_TYPES = frozenset(
    {
        "sklearn.compose._column_transformer.ColumnTransformer",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.preprocessing._data.MinMaxScaler",
        "sklearn.preprocessing._encoders.OneHotEncoder",
        "sklearn.utils._bunch.Bunch",
        "numpy.float32",
        "numpy.float64",
        "numpy.dtype",
        "builtins.slice",
    }
)


def _skops_io() -> ModuleType:
    """``skops.io``, imported on first save or load without its scan of all of scikit-learn.

    At import, skops lists every scikit-learn estimator (``sklearn.utils.all_estimators``, which
    imports each of scikit-learn's modules, dask's array API and more: 2-4 s, the largest part
    of `anomaly score`'s start-up) as trusted by default. Its list is built from ours instead,
    for that one import: a preprocessor holds nothing else, the load below trusts only
    ``_TRUSTED_TYPES`` anyway, and any other estimator a skops file names in this process is
    reported as untrusted, which is stricter, never looser.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    import sklearn.utils

    ours = (ColumnTransformer, StandardScaler, MinMaxScaler, OneHotEncoder)
    scan = sklearn.utils.all_estimators
    sklearn.utils.all_estimators = lambda type_filter=None: [(c.__name__, c) for c in ours]
    try:
        import skops.io
    finally:
        sklearn.utils.all_estimators = scan
    return skops.io


MISSING_CATEGORY = "__missing__"
ENCODED_LIMIT = 1e6


class TabularPreprocessor:
    """Scale numeric features and one-hot encode categorical ones.

    Parameters
    ----------
    schema : TableSchema
        Which columns are numeric and which categorical.
    scaler : {"standard", "minmax"}
        ``"minmax"`` maps training data to [0, 1], which the BCE loss needs.
    """

    def __init__(self, schema: TableSchema, scaler: ScalerName = "standard"):
        self.schema = schema
        self.scaler = scaler

    def fit(self, frame: pd.DataFrame) -> TabularPreprocessor:
        """Fit on normal rows whose features are all finite."""
        self._fit(frame)
        return self

    def fit_transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Fit on ``frame`` and return what ``transform(frame)`` would, without a second pass.

        scikit-learn's ``ColumnTransformer.fit`` computes the transform of the fit rows anyway;
        this keeps it (clipped and cast as :meth:`transform` does) instead of discarding it.
        """
        return self._finish(self._fit(frame))

    def _fit(self, frame: pd.DataFrame) -> np.ndarray:
        numeric = self.schema.numeric_columns
        categorical = self.schema.categorical_columns
        scaler = StandardScaler() if self.scaler == "standard" else MinMaxScaler()
        encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False, dtype=np.float32)
        self.transformer_ = ColumnTransformer(
            [("numeric", scaler, numeric), ("categorical", encoder, categorical)],
            remainder="drop",
            verbose_feature_names_out=False,
        )
        values = self._numeric_values(frame)
        out = self.transformer_.fit_transform(self._prepare(frame, values=values))
        self.medians_ = dict(zip(numeric, _column_medians(frame[numeric], values), strict=True))
        self._set_output_layout()
        return np.asarray(out)

    def _set_output_layout(self) -> None:
        # Which input column each encoded column came from, so errors on one-hot columns can be
        # summed back to the categorical column a user knows.
        names = list(self.schema.numeric_columns)
        sources = list(range(len(names)))
        if self.schema.categorical_columns:
            encoder = self.transformer_.named_transformers_["categorical"]
            offset = len(names)
            for j, (column, cats) in enumerate(
                zip(self.schema.categorical_columns, encoder.categories_, strict=True)
            ):
                names += [f"{column}={c}" for c in cats]
                sources += [offset + j] * len(cats)
        self.output_names_ = names
        self.output_sources_ = np.asarray(sources, dtype=np.int64)
        self.input_names_ = self.schema.numeric_columns + self.schema.categorical_columns

    def _numeric_values(self, frame: pd.DataFrame, impute: bool = False) -> np.ndarray:
        """The numeric features as one float64 block ``(n, n_numeric)`` (a fresh copy)."""
        numeric = self.schema.numeric_columns
        values = frame[numeric].to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
        if impute:
            medians = np.array([self.medians_[c] for c in numeric])
            values = np.where(np.isfinite(values), values, medians)
        return values

    def _prepare(
        self, frame: pd.DataFrame, impute: bool = False, values: np.ndarray | None = None
    ) -> pd.DataFrame:
        # One block for the numeric columns (one conversion, no per-column arrays to join).
        if values is None:
            values = self._numeric_values(frame, impute)
        prepared = pd.DataFrame(
            values, columns=self.schema.numeric_columns, index=frame.index, copy=False
        )
        categorical = self._prepare_categorical(frame)
        if not categorical:
            return prepared
        return pd.concat([prepared, pd.DataFrame(categorical, index=frame.index)], axis=1)

    def _prepare_categorical(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        data = {}
        for column in self.schema.categorical_columns:
            values = frame[column].astype(object)
            data[column] = values.where(values.notna(), MISSING_CATEGORY).astype(str).to_numpy()
        return data

    def transform(self, frame: pd.DataFrame, impute: bool = False) -> np.ndarray:
        """Encode ``frame`` to a float32 array ``(n_samples, n_encoded)``.

        With ``impute``, non-finite numeric values become the fit median and null categories an
        unknown category (all zeros).
        """
        if not hasattr(self, "transformer_"):
            raise NotFittedError("TabularPreprocessor is not fitted; call fit first")
        if len(frame) == 0:
            # scikit-learn refuses empty input; an empty batch (or one whose rows were all
            # rejected) is ordinary in monitoring and must flow through.
            return np.zeros((0, self.n_outputs), dtype=np.float32)
        out = self._transform_direct(frame, impute)
        if out is None:
            out = self.transformer_.transform(self._prepare(frame, impute=impute))
        return self._finish(out)

    @staticmethod
    def _finish(out: np.ndarray) -> np.ndarray:
        # A finite but enormous reading (1e300) would overflow float32 to inf and turn its score
        # into inf or NaN. A million scaled units is far past anything the model has seen, so
        # the row still scores as maximally anomalous, and the arithmetic stays finite.
        out = np.clip(out, -ENCODED_LIMIT, ENCODED_LIMIT, out=out)
        return np.ascontiguousarray(out, dtype=np.float32)

    def _transform_direct(self, frame: pd.DataFrame, impute: bool) -> np.ndarray | None:
        """What ``transformer_.transform`` returns, computed without the ColumnTransformer.

        Scoring streams call this once per batch, where scikit-learn's per-call validation and
        a per-column DataFrame cost more than the arithmetic. The arithmetic is the fitted
        scaler's own, in the same float64 order, so results are identical bit for bit. None
        when the fitted transformer is not the plain layout this replicates.
        """
        parts: dict[str, Any] = dict(self.transformer_.named_transformers_)
        scaler: Any = parts.get("numeric")
        numeric = self.schema.numeric_columns
        if not numeric or type(scaler) not in (StandardScaler, MinMaxScaler):
            return None
        values = self._numeric_values(frame, impute)
        if isinstance(scaler, StandardScaler):
            if scaler.with_mean:
                values -= scaler.mean_
            if scaler.with_std:
                values /= scaler.scale_
        else:
            if scaler.clip:
                return None
            values *= scaler.scale_
            values += scaler.min_
        categorical = self.schema.categorical_columns
        if not categorical:
            return values
        prepared = pd.DataFrame(self._prepare_categorical(frame), index=frame.index)
        encoded = parts["categorical"].transform(prepared)
        return np.hstack([values, encoded])

    @property
    def n_outputs(self) -> int:
        return len(self.output_names_)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write ``preprocessor.skops`` (scikit-learn objects, no pickle) and the medians to JSON."""
        directory = Path(directory)
        _skops_io().dump(self.transformer_, directory / "preprocessor.skops")
        (directory / "preprocessor.json").write_text(
            json.dumps({"scaler": self.scaler, "medians": self.medians_}, indent=2)
        )

    @classmethod
    def load(cls, directory: str | os.PathLike[str], schema: TableSchema) -> TabularPreprocessor:
        """Load what :meth:`save` wrote, refusing any type outside a fixed allowlist."""
        directory = Path(directory)
        path = directory / "preprocessor.skops"
        try:
            sio = _skops_io()
            untrusted = set(sio.get_untrusted_types(file=path))
            unexpected = untrusted - _TRUSTED_TYPES
            if unexpected:
                raise ModelFileError(
                    f"{path}: contains types outside the allowlist: {sorted(unexpected)}"
                )
            transformer = sio.load(path, trusted=sorted(untrusted))
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(f"{path}: cannot load preprocessor ({exc})") from exc
        meta_path = directory / "preprocessor.json"
        try:
            meta = json.loads(meta_path.read_text())
            scaler, medians = meta["scaler"], {k: float(v) for k, v in meta["medians"].items()}
            if scaler not in ("standard", "minmax"):
                raise ValueError(f"unknown scaler {scaler!r}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{meta_path}: unreadable preprocessor settings ({exc})") from exc
        # skops trusts scikit-learn types by default; also insist on the exact structure we save.
        parts = (
            getattr(transformer, "transformers_", None)
            if isinstance(transformer, ColumnTransformer)
            else None
        )
        allowed = (StandardScaler, MinMaxScaler, OneHotEncoder)
        if parts is None or not all(isinstance(t, allowed) or t == "drop" for _, t, _ in parts):
            raise ModelFileError(
                f"{path}: expected a fitted ColumnTransformer of scalers and a one-hot encoder, "
                f"found {type(transformer).__name__}"
            )
        obj = cls(schema, scaler=scaler)
        obj.transformer_ = transformer
        obj.medians_ = medians
        obj._set_output_layout()
        return obj


def _column_medians(columns: pd.DataFrame, values: np.ndarray) -> list[float]:
    """``np.median`` of each column, computed with one selection per column.

    ``values`` is ``columns`` as float64 ``(n, d)``. ``np.median`` partitions around both
    middle positions (and checks for NaN with a third); one partition around the upper middle,
    then the largest value below it, finds the same two order statistics, and their mean is
    computed as ``np.median`` computes it, so the results are identical bit for bit, in half
    the time. Float32 columns are selected in float32, which is exact: widening keeps the
    order, so it commutes with taking order statistics. Anything with NaN or no rows goes to
    ``np.median`` itself.
    """
    n, d = values.shape
    if d == 0:
        return []
    if n == 0 or not np.isfinite(values).all():
        return [float(np.median(values[:, j])) for j in range(d)]
    if all(dtype == np.float32 for dtype in columns.dtypes):
        values = columns.to_numpy(dtype=np.float32)
    by_column = np.ascontiguousarray(values.T)  # (d, n): each selection reads one run of memory
    k = n // 2
    parted = np.partition(by_column, k, axis=1)
    upper = parted[:, k].astype(np.float64)
    if n % 2:
        return [float(v) for v in upper]
    lower = parted[:, :k].max(axis=1).astype(np.float64)
    return [float(v) for v in (lower + upper) / 2]


class SeriesScaler:
    """Standard or min-max scaling of series features, fitted globally or per series id.

    Held as plain numbers (saved as JSON), because a scaler is nothing more. A series id not
    seen at fit falls back to the global statistics, with a warning.
    """

    def __init__(self, scaler: str = "standard", per_series: bool = False):
        if scaler not in ("standard", "minmax"):
            raise ValueError(f"scaler must be 'standard' or 'minmax', got {scaler!r}")
        self.scaler = scaler
        self.per_series = per_series
        self.stats_: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _stats(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.scaler == "standard":
            center, scale = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        else:
            center = np.nanmin(values, axis=0)
            scale = np.nanmax(values, axis=0) - center
        center = np.nan_to_num(center)
        # A constant feature keeps scale 1, as scikit-learn's scalers do.
        scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
        return center, scale

    def fit(self, values: np.ndarray, series: np.ndarray) -> SeriesScaler:
        """Fit on ``values`` ``(n_points, n_features)`` with the series id of each point."""
        self.stats_ = {"": self._stats(values)}
        if self.per_series:
            for sid in np.unique(series.astype(str)):
                self.stats_[f"series:{sid}"] = self._stats(values[series.astype(str) == sid])
        return self

    def transform(self, values: np.ndarray, series: np.ndarray) -> np.ndarray:
        """Scaled float32 copy of ``values``."""
        out = np.empty(values.shape, dtype=np.float32)
        # Clipped as TabularPreprocessor.transform clips: a finite but enormous reading (1e300)
        # would overflow float32 to inf and make every window over it score inf.
        if not self.per_series:
            center, scale = self.stats_[""]
            out[:] = np.clip((values - center) / scale, -ENCODED_LIMIT, ENCODED_LIMIT)
            return out
        ids = series.astype(str)
        for sid in np.unique(ids):
            key = f"series:{sid}"
            if key not in self.stats_:
                logger.warning(
                    "series %r was not seen at fit: scaling it with global statistics", sid
                )
            center, scale = self.stats_.get(key, self.stats_[""])
            mask = ids == sid
            out[mask] = np.clip((values[mask] - center) / scale, -ENCODED_LIMIT, ENCODED_LIMIT)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "scaler": self.scaler,
            "per_series": self.per_series,
            "stats": {k: [c.tolist(), s.tolist()] for k, (c, s) in self.stats_.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeriesScaler:
        scaler = cls(data["scaler"], data["per_series"])
        scaler.stats_ = {
            k: (np.asarray(c, dtype=np.float64), np.asarray(s, dtype=np.float64))
            for k, (c, s) in data["stats"].items()
        }
        return scaler
