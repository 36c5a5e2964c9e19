"""Models saved in format v1 by the code before the core rebuild load and score exactly as then.

The fixtures (``tests/fixtures/v1``, written by ``make_fixtures.py`` there) hold one small model
of each data kind, its inputs, and the outputs the code of the time produced: arrays from the
detector's methods and the files ``score_files_to`` wrote.

Everything but floats must be equal exactly (schemas, keys, flags, reasons, p-values, counts).
Floats are equal bit for bit on a CPU whose kernels match those of the machine that made the
fixtures; on another CPU (AMD vs Intel, AVX2 vs AVX-512 paths of oneDNN) conv and LSTM outputs
differ in the last bits of float32 (measured: scores 5e-7 relative), so floats are compared to
1e-5 relative, with an absolute floor of 1e-5 of the array's scale for values near zero.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anomaly import AutoencoderDetector
from anomaly.pipeline import context_path_for, score_files_to
from anomaly.tracking import LoadedModel

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def _load(kind: str) -> AutoencoderDetector:
    return AutoencoderDetector.load(FIXTURES / kind / "model", device="cpu")


def _model(detector: AutoencoderDetector, name: str) -> LoadedModel:
    return LoadedModel(detector=detector, name=name, version="1", model_uri=f"models:/{name}/1")


def _same_arrays(expected: np.lib.npyio.NpzFile, **actual: np.ndarray) -> None:
    assert sorted(expected.files) == sorted(actual)
    for name, value in actual.items():
        want, got = expected[name], np.asarray(value)
        assert got.shape == want.shape, name
        assert got.dtype == want.dtype, name
        _close(got, want, name)


def _close(got: np.ndarray, want: np.ndarray, name: str) -> None:
    if got.dtype.kind != "f":
        assert np.array_equal(got, want), name
        return
    assert np.array_equal(np.isnan(got), np.isnan(want)), name
    finite = want[np.isfinite(want)]
    scale = float(np.abs(finite).max()) if finite.size else 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale, err_msg=name)


def _table(path: Path) -> pa.Table:
    """A written output, with ``source_file`` and image ``path`` reduced to file names (the fixtures moved)."""
    table = pq.read_table(path)
    for column in ("source_file", "path"):
        if column in table.column_names:
            i = table.column_names.index(column)
            names = pa.array([None if v is None else Path(v).name for v in table[i].to_pylist()])
            table = table.set_column(
                i, table.schema.field(i), names.cast(table.schema.field(i).type)
            )
    return table.replace_schema_metadata(None)


def _same_outputs(expected: Path, actual: Path) -> None:
    for suffix in (".parquet", ".rejects.parquet", ".quarantine.parquet"):
        want = _table(expected.with_name(expected.stem + suffix))
        got = _table(actual.with_name(actual.stem + suffix))
        assert got.schema.equals(want.schema), (suffix, got.schema, want.schema)
        assert got.num_rows == want.num_rows, suffix
        for name in want.column_names:
            column = want[name]
            if pa.types.is_floating(column.type):
                _close(
                    got[name].to_numpy(zero_copy_only=False),
                    column.to_numpy(zero_copy_only=False),
                    f"{suffix}:{name}",
                )
            else:
                assert got[name].equals(column), f"{suffix}:{name}"


def test_tabular_v1_model_scores_as_before(tmp_path):
    root = FIXTURES / "tabular"
    detector = _load("tabular")
    incoming = pd.read_parquet(root / "incoming" / "batch.parquet")
    good = incoming.drop(index=[3, 17])
    with np.load(root / "expected_arrays.npz", allow_pickle=False) as expected:
        _same_arrays(
            expected,
            score_samples=detector.score_samples(good),
            p_values=detector.p_values(good),
            predict=detector.predict(good),
            feature_errors=detector.feature_errors(good).to_numpy(),
            latent=detector.latent(good),
        )
    out = tmp_path / "out.parquet"
    score_files_to(_model(detector, "v1-tabular"), str(root / "incoming"), out)
    _same_outputs(root / "expected.parquet", out)


def test_series_v1_model_scores_as_before_with_context(tmp_path):
    root = FIXTURES / "series"
    detector = _load("series")
    first = pd.read_parquet(root / "batch1" / "part.parquet")
    second = pd.read_parquet(root / "batch2" / "part.parquet")
    context = detector.next_context(first)
    with np.load(root / "expected_arrays.npz", allow_pickle=False) as expected:
        _same_arrays(
            expected,
            score_samples_first=detector.score_samples(first.iloc[30:]),
            score_samples_second=detector.score_samples(second, context=context),
            feature_errors_second=detector.feature_errors(second, context=context).to_numpy(),
            latent_second=detector.latent(second, context=context),
            context_second=detector.next_context(second, context)
            .to_numpy(dtype=object)
            .astype(str),
        )
    model = _model(detector, "v1-series")
    context_path = context_path_for(tmp_path / "out.parquet", "v1-series")
    for n in (1, 2):
        out = tmp_path / f"out{n}.parquet"
        score_files_to(model, str(root / f"batch{n}"), out, context_path=context_path)
        _same_outputs(root / f"expected{n}.parquet", out)
    assert _table(context_path).equals(_table(root / "expected_context.parquet"))


def test_image_v1_model_scores_as_before(tmp_path):
    root = FIXTURES / "images"
    detector = _load("images")
    folder = tmp_path / "incoming"
    shutil.copytree(root / "incoming", folder)
    test = np.load(root / "test.npy", allow_pickle=False)
    with np.load(root / "expected_arrays.npz", allow_pickle=False) as expected:
        _same_arrays(
            expected,
            score_samples=detector.score_samples(test),
            error_maps=detector.error_maps(test),
            reconstruct=detector.reconstruct(test),
            latent=detector.latent(test),
        )
    out = tmp_path / "out.parquet"
    score_files_to(_model(detector, "v1-images"), str(folder), out)
    _same_outputs(root / "expected.parquet", out)


@pytest.mark.parametrize("kind", ["tabular", "series", "images"])
def test_v1_fixture_manifest_is_intact(kind):
    """The fixture models are the reference: a change to them must be deliberate."""
    AutoencoderDetector.load(FIXTURES / kind / "model", device="cpu")
