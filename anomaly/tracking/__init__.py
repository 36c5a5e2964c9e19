"""MLflow tracking and registry: the only package that reads ``mlflow.yaml`` and calls mlflow.

:mod:`~anomaly.tracking.store` (configuration, loading registered models),
:mod:`~anomaly.tracking.training_run` (the training run and its reviews),
:mod:`~anomaly.tracking.scoring_run` (batch runs and the monitor run) and
:mod:`~anomaly.tracking.versions` (champion alias, recorded settings, threshold changes).
"""

from anomaly.tracking.scoring_run import log_scoring_run
from anomaly.tracking.store import (
    CHAMPION,
    DEFAULT_CONFIG_PATH,
    TRAIN_SETTINGS_ARTIFACT,
    LoadedModel,
    RegisteredModel,
    TrackingConfig,
    configure,
    frame_digest,
    load_registered_detector,
    resolve_model_version,
    ui_command,
)
from anomaly.tracking.training_run import log_training_run
from anomaly.tracking.versions import (
    alias_version,
    promote,
    recorded_train_settings,
    register_threshold_change,
)

__all__ = [
    "CHAMPION",
    "DEFAULT_CONFIG_PATH",
    "TRAIN_SETTINGS_ARTIFACT",
    "LoadedModel",
    "RegisteredModel",
    "TrackingConfig",
    "alias_version",
    "configure",
    "frame_digest",
    "load_registered_detector",
    "log_scoring_run",
    "log_training_run",
    "promote",
    "recorded_train_settings",
    "register_threshold_change",
    "resolve_model_version",
    "ui_command",
]
