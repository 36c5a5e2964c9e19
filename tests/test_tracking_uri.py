"""A tracking URI that cannot work fails at once, naming the path."""

from __future__ import annotations

import os
import re

import pytest

from anomaly.errors import TrackingStoreError
from anomaly.tracking import TrackingConfig, configure
from anomaly.tracking_uri import HTTP_RETRY_DEFAULTS, check_tracking_uri, sqlite_path


@pytest.mark.parametrize(
    "uri, path",
    [
        ("sqlite:///mlflow.db", "mlflow.db"),
        ("sqlite:////abs/dir/mlflow.db", "/abs/dir/mlflow.db"),
        ("sqlite:///x.db?timeout=5", "x.db"),
        ("sqlite:///:memory:", None),
        ("http://localhost:5000", None),
        ("/some/folder", None),
    ],
)
def test_sqlite_path(uri, path):
    found = sqlite_path(uri)
    assert (None if found is None else found.as_posix()) == path


def test_a_folder_as_the_sqlite_store_is_refused_naming_it(tmp_path):
    config = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}", experiment_name="t")
    with pytest.raises(TrackingStoreError, match=re.escape(f"{tmp_path} is a folder")):
        configure(config)


def test_a_store_in_a_missing_folder_is_refused_naming_it(tmp_path):
    with pytest.raises(
        TrackingStoreError, match=re.escape(f"the folder {tmp_path / 'nope'} of the database")
    ):
        check_tracking_uri(f"sqlite:///{tmp_path / 'nope' / 'mlflow.db'}")


def test_a_server_gets_bounded_retries_unless_the_user_set_them(monkeypatch):
    for name in HTTP_RETRY_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    check_tracking_uri("http://127.0.0.1:9")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
