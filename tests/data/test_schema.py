import numpy as np
import pandas as pd
import pytest

from anomaly.data.schema import TableSchema, invalid_row_reasons
from anomaly.errors import SchemaError


def frame():
    return pd.DataFrame(
        {
            "id": np.arange(4, dtype=np.int64),
            "a": [1.0, 2.0, 3.0, 4.0],
            "b": [1, 2, 3, 4],
            "kind": pd.Series(["x", "y", "x", "y"], dtype="string"),
        }
    )


def test_default_features_are_numeric_non_key_columns():
    schema = TableSchema.infer(frame(), key_columns=["id"])
    assert schema.feature_names == ["a", "b"]
    assert schema.keys == ("id",)


def test_categorical_columns_are_added_and_marked():
    schema = TableSchema.infer(frame(), categorical_columns=["kind"], key_columns=["id"])
    assert schema.numeric_columns == ["a", "b"]
    assert schema.categorical_columns == ["kind"]


def test_unknown_named_column_is_an_error_naming_it():
    with pytest.raises(SchemaError, match="'nope' not found"):
        TableSchema.infer(frame(), feature_columns=["a", "nope"])


def test_missing_column_at_scoring_names_column_expected_and_found():
    schema = TableSchema.infer(frame(), key_columns=["id"])
    with pytest.raises(
        SchemaError, match=r"missing column 'b': expected numeric \(int64\)"
    ) as info:
        schema.validate(frame().drop(columns="b"), source="batch.parquet")
    assert info.value.column == "b"
    assert "batch.parquet" in str(info.value)


def test_incompatible_type_names_column_and_both_types():
    schema = TableSchema.infer(frame(), key_columns=["id"])
    bad = frame().assign(a=["1", "2", "3", "x"])
    with pytest.raises(
        SchemaError, match=r"column 'a': expected numeric \(float64\), found (object|str)"
    ):
        schema.validate(bad)


def test_int_and_float_are_compatible():
    schema = TableSchema.infer(frame(), key_columns=["id"])
    schema.validate(frame().assign(b=[1.5, 2.5, 3.5, 4.5]))


def test_missing_key_column_is_an_error():
    schema = TableSchema.infer(frame(), key_columns=["id"])
    with pytest.raises(SchemaError, match="missing key column 'id'"):
        schema.validate(frame().drop(columns="id"))
    schema.validate(frame().drop(columns="id"), require_keys=False)


def test_round_trip_through_dict():
    schema = TableSchema.infer(frame(), categorical_columns=["kind"], key_columns=["id"])
    assert TableSchema.from_dict(schema.to_dict()) == schema
    ranged = schema.with_ranges(frame())
    assert TableSchema.from_dict(ranged.to_dict()) == ranged != schema


def test_training_range_ignores_non_finite_values_and_a_constant_column_has_no_slack():
    df = pd.DataFrame({"a": [0.0, 10.0, np.nan, np.inf], "c": [5.0, 5.0, 5.0, 5.0]})
    schema = TableSchema.infer(df).with_ranges(df)
    assert [(f.low, f.high) for f in schema.features] == [(0.0, 10.0), (5.0, 5.0)]
    new = pd.DataFrame({"a": [-10.0, -10.5, 21.0, np.nan, -np.inf], "c": [5.0, 5.0, 5.0, 5.1, 5.0]})
    assert schema.out_of_range(new).tolist() == [None, "a", "a", "c", None]


def test_invalid_row_reasons_name_every_bad_column():
    df = frame().astype({"b": "float64"})
    df.loc[1, "a"] = np.nan
    df.loc[1, "b"] = np.inf
    df.loc[2, "kind"] = pd.NA
    schema = TableSchema.infer(frame(), categorical_columns=["kind"], key_columns=["id"])
    reasons = invalid_row_reasons(df, schema)
    assert reasons.tolist() == [
        "",
        "missing or non-finite value in a, b",
        "missing or non-finite value in kind",
        "",
    ]


def test_categorical_fed_numbers_is_an_error_but_codes_stay_codes():
    schema = TableSchema.infer(frame(), categorical_columns=["kind"], key_columns=["id"])
    with pytest.raises(
        SchemaError, match=r"column 'kind': expected categorical \(string\), found float64"
    ):
        schema.validate(frame().assign(kind=[1.0, 2.0, 1.0, 2.0]))
    coded = TableSchema.infer(frame(), categorical_columns=["b"], key_columns=["id"])
    coded.validate(frame().assign(b=[7, 8, 9, 10]))


def test_all_null_column_is_left_to_the_row_policy():
    schema = TableSchema.infer(frame(), key_columns=["id"])
    down = frame().assign(a=[None] * 4)
    schema.validate(down)
    assert (invalid_row_reasons(down, schema) == "missing or non-finite value in a").all()


def test_integer_column_labels_become_strings():
    from anomaly.data.schema import as_frame

    labelled = as_frame(pd.DataFrame(np.ones((3, 2))))
    assert list(labelled.columns) == ["0", "1"]
    assert TableSchema.infer(labelled).feature_names == ["0", "1"]
