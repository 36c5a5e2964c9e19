import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from anomaly.data.schema import TableSchema
from anomaly.errors import ModelFileError
from anomaly.preprocessing import TabularPreprocessor


@pytest.fixture
def table():
    return pd.DataFrame(
        {
            "a": [1.0, 2.0, 3.0, 10.0],
            "b": [5.0, 5.0, 6.0, 6.0],
            "kind": pd.Series(["x", "y", "x", "z"], dtype="string"),
        }
    )


@pytest.fixture
def schema(table):
    return TableSchema.infer(table, categorical_columns=["kind"])


def test_standard_scaling_and_one_hot(table, schema):
    pre = TabularPreprocessor(schema).fit(table)
    out = pre.transform(table)
    assert out.dtype == np.float32
    assert pre.output_names_ == ["a", "b", "kind=x", "kind=y", "kind=z"]
    np.testing.assert_allclose(out[:, 0].mean(), 0, atol=1e-6)
    np.testing.assert_array_equal(out[:, 2:], [[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert pre.output_sources_.tolist() == [0, 1, 2, 2, 2]


def test_minmax_maps_training_data_to_unit_interval(table, schema):
    out = TabularPreprocessor(schema, scaler="minmax").fit(table).transform(table)
    assert out[:, :2].min() == 0 and out[:, :2].max() == 1


def test_unknown_category_is_all_zeros(table, schema):
    pre = TabularPreprocessor(schema).fit(table)
    out = pre.transform(table.assign(kind=pd.Series(["new"] * 4, dtype="string")))
    assert (out[:, 2:] == 0).all()


def test_impute_uses_fit_median(table, schema):
    pre = TabularPreprocessor(schema).fit(table)
    holed = table.copy()
    holed.loc[0, "a"] = np.nan
    holed.loc[1, "a"] = np.inf
    filled = pre.transform(holed, impute=True)
    median_row = pre.transform(table.assign(a=np.median(table["a"])))
    np.testing.assert_allclose(filled[:2, 0], median_row[:2, 0])


def test_save_load_round_trip(tmp_path, table, schema):
    pre = TabularPreprocessor(schema).fit(table)
    pre.save(tmp_path)
    loaded = TabularPreprocessor.load(tmp_path, schema)
    np.testing.assert_array_equal(loaded.transform(table), pre.transform(table))
    assert loaded.output_names_ == pre.output_names_


def test_load_refuses_types_outside_allowlist(tmp_path, table, schema):
    TabularPreprocessor(schema).fit(table).save(tmp_path)
    # A file that would call eval on whatever it is given.
    sio.dump(FunctionTransformer(eval), tmp_path / "preprocessor.skops")
    with pytest.raises(ModelFileError, match=r"outside the allowlist: \['builtins.eval'\]"):
        TabularPreprocessor.load(tmp_path, schema)


def test_load_refuses_other_scikit_learn_objects(tmp_path, table, schema):
    TabularPreprocessor(schema).fit(table).save(tmp_path)
    sio.dump(make_pipeline(FunctionTransformer(np.exp)), tmp_path / "preprocessor.skops")
    with pytest.raises(ModelFileError, match="expected a fitted ColumnTransformer"):
        TabularPreprocessor.load(tmp_path, schema)


def test_load_of_garbage_is_a_model_file_error(tmp_path, table, schema):
    TabularPreprocessor(schema).fit(table).save(tmp_path)
    (tmp_path / "preprocessor.skops").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="preprocessor"):
        TabularPreprocessor.load(tmp_path, schema)


def test_enormous_finite_values_stay_finite(table, schema):
    pre = TabularPreprocessor(schema).fit(table)
    out = pre.transform(table.assign(a=[1e300, -1e300, 3.0, 1e30]))
    assert np.isfinite(out).all()
    assert out[0, 0] == 1e6 and out[1, 0] == -1e6


@pytest.mark.parametrize("scaler", ["standard", "minmax"])
@pytest.mark.parametrize("impute", [False, True])
def test_direct_transform_equals_the_column_transformer_bit_for_bit(scaler, impute):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "a": rng.normal(5, 3, 500).astype(np.float32),
            "b": rng.lognormal(size=500),
            "kind": pd.Series(rng.choice(["x", "y", None], 500), dtype=object),
        }
    )
    frame.loc[[4, 9], "a"] = [np.nan, np.inf]
    if not impute:  # scikit-learn refuses inf; scoring sets such rows aside before this point
        frame = frame.drop(index=9)
    for categorical in (["kind"], []):
        schema = TableSchema.infer(
            frame, categorical_columns=categorical, feature_columns=["a", "b"]
        )
        pre = TabularPreprocessor(schema, scaler=scaler).fit(frame.iloc[10:].dropna().iloc[:300])
        direct = pre._transform_direct(frame, impute)
        through_sklearn = pre.transformer_.transform(pre._prepare(frame, impute=impute))
        assert direct is not None
        np.testing.assert_array_equal(direct, through_sklearn)


@pytest.mark.parametrize("n", [1, 2, 7, 500, 501])
def test_column_medians_equal_numpy_median_bit_for_bit(n):
    rng = np.random.default_rng(n)
    frame = pd.DataFrame(
        {
            "f32": rng.normal(size=n).astype(np.float32),
            "f64": rng.lognormal(size=n),
            "ties": rng.integers(0, 3, n).astype(np.float64),
            "int": rng.integers(-5, 5, n),
        }
    )
    for columns in (["f32"], list(frame.columns)):
        pre = TabularPreprocessor(TableSchema.infer(frame[columns])).fit(frame[columns])
        assert pre.medians_ == {c: float(np.median(frame[c].to_numpy(np.float64))) for c in columns}


@pytest.mark.parametrize("scaler", ["standard", "minmax"])
def test_fit_transform_equals_fit_then_transform(table, schema, scaler):
    fitted = TabularPreprocessor(schema, scaler=scaler).fit(table)
    pre = TabularPreprocessor(schema, scaler=scaler)
    np.testing.assert_array_equal(pre.fit_transform(table), fitted.transform(table))
    assert pre.medians_ == fitted.medians_
    assert pre.output_names_ == fitted.output_names_
