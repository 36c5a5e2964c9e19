"""Shared fixtures: seeds, small generated tables, a temporary MLflow store, one Prefect test server."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Registry models fetched by the tests are cached here, not in the user's ~/.cache.
os.environ["ANOMALY_CACHE_DIR"] = tempfile.mkdtemp(prefix="anomaly-test-cache-")

from anomaly.data.synthetic import make_sensor_table

KEYS = ["reading_id", "timestamp"]
# Small and fast: enough epochs to learn the sensor correlations on 2 CPU cores.
FAST = {"epochs": 60, "batch_size": 64, "learning_rate": 3e-3, "patience": 10, "verbose": False}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def normal_table() -> pd.DataFrame:
    return make_sensor_table(2500, anomaly_fraction=0.0, seed=11)


@pytest.fixture(scope="session")
def incoming_table() -> pd.DataFrame:
    return make_sensor_table(1500, anomaly_fraction=0.1, seed=12, first_id=10_000)


@pytest.fixture(scope="session")
def fitted_detector(normal_table):
    from anomaly import AutoencoderDetector

    return AutoencoderDetector(categorical_columns=["machine_type"], key_columns=KEYS, **FAST).fit(
        normal_table
    )


@pytest.fixture
def tracking_config(tmp_path, monkeypatch):
    """A TrackingConfig on a fresh SQLite store under tmp_path, with MLFLOW_TRACKING_URI unset."""
    from anomaly.tracking import TrackingConfig

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return TrackingConfig(
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        artifact_location=str(tmp_path / "artifacts"),
        experiment_name="tests",
        registered_model_name="test-detector",
    )


@pytest.fixture(scope="session")
def prefect_server():
    """One ephemeral Prefect API for the whole session (it takes ~15 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# A small time-series detector for tests that need one fitted, not a good one.
SERIES_FAST = {
    "model": "conv1d",
    "window": 16,
    "time_column": "timestamp",
    "series_column": "machine",
    "key_columns": ["injected_anomaly"],
    "epochs": 3,
    "batch_size": 64,
    "learning_rate": 3e-3,
    "verbose": False,
}


@pytest.fixture(scope="session")
def series_table() -> pd.DataFrame:
    from anomaly.data.synthetic import make_series_table

    return make_series_table(600, n_series=2, seed=5)


@pytest.fixture(scope="session")
def fitted_series_detector(series_table):
    from anomaly import AutoencoderDetector

    return AutoencoderDetector(**SERIES_FAST).fit(series_table)
