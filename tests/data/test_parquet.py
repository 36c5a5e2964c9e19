import pandas as pd
import pyarrow as pa
import pytest

from anomaly.data.parquet import list_parquet_files, read_table, write_parquet_atomic
from anomaly.errors import DataFileError


@pytest.fixture
def parts(tmp_path):
    a = pd.DataFrame({"id": [1, 2], "x": [0.5, 1.5]})
    b = pd.DataFrame({"id": [3], "x": [2.5]})
    write_parquet_atomic(a, tmp_path / "in" / "a.parquet")
    write_parquet_atomic(b, tmp_path / "in" / "sub" / "b.parquet")
    return tmp_path / "in"


def test_reads_file_directory_and_glob(parts):
    assert read_table(parts / "a.parquet")["id"].tolist() == [1, 2]
    assert read_table(parts)["id"].tolist() == [1, 2, 3]
    assert read_table(str(parts / "*.parquet"))["id"].tolist() == [1, 2]
    assert [p.name for p in list_parquet_files(parts)] == ["a.parquet", "b.parquet"]


def test_missing_source_names_it(tmp_path):
    with pytest.raises(DataFileError, match="nothing-here"):
        read_table(tmp_path / "nothing-here.parquet")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileError, match="no Parquet files"):
        read_table(tmp_path / "empty")


def test_corrupt_file_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_text("this is not parquet")
    with pytest.raises(DataFileError, match=r"bad\.parquet: cannot read as Parquet"):
        read_table(bad)


def test_incompatible_files_name_the_odd_one(tmp_path):
    write_parquet_atomic(pd.DataFrame({"x": [1.0]}), tmp_path / "a.parquet")
    write_parquet_atomic(pd.DataFrame({"x": ["text"]}), tmp_path / "b.parquet")
    with pytest.raises(DataFileError, match=r"b\.parquet"):
        read_table(tmp_path)


def test_files_with_different_columns_are_refused(tmp_path):
    write_parquet_atomic(pd.DataFrame({"a": [1.0], "b": [2.0]}), tmp_path / "a.parquet")
    write_parquet_atomic(pd.DataFrame({"a": [1.0]}), tmp_path / "b.parquet")
    with pytest.raises(
        DataFileError, match=r"b\.parquet: columns differ from .*a\.parquet: missing \['b'\]"
    ):
        read_table(tmp_path)


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out.parquet"
    write_parquet_atomic(pd.DataFrame({"x": [1]}), target)
    write_parquet_atomic(pd.DataFrame({"x": [2, 3]}), target)
    assert pd.read_parquet(target)["x"].tolist() == [2, 3]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_failed_write_keeps_previous_file(tmp_path):
    target = tmp_path / "out.parquet"
    write_parquet_atomic(pd.DataFrame({"x": [1]}), target)
    unwritable = pd.DataFrame({"x": [object()]})  # pyarrow cannot convert an arbitrary object
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_parquet_atomic(unwritable, target)
    assert pd.read_parquet(target)["x"].tolist() == [1]
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]
