"""The tracking store: ``mlflow.yaml``, the experiment, and loading registered models from it."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, PrivateAttr

from anomaly.errors import ModelFileError, ModelNotFoundError
from anomaly.integrity import MANIFEST_TAG, verify_digest
from anomaly.tracking.model_cache import cache_root, entry_path, load_cached
from anomaly.tracking_uri import check_tracking_uri, require_store, sqlite_path

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = Path("mlflow.yaml")
CHAMPION = "champion"
TRAIN_SETTINGS_ARTIFACT = "train_settings.json"
KEY_TAG = "anomaly.idempotency_key"
# Calibration quantiles logged with each model and compared with each batch.
CALIBRATION_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)


class TrackingConfig(BaseModel):
    """Contents of ``mlflow.yaml``. ``MLFLOW_TRACKING_URI`` in the environment overrides ``tracking_uri``."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_location: str | None = "mlartifacts"
    experiment_name: str = "anomaly"
    registered_model_name: str = "anomaly-detector"
    # Where the configuration was looked for, and whether it was found: errors about a missing
    # store say so, since a command run outside the project folder finds no mlflow.yaml.
    _looked_for: Path | None = PrivateAttr(default=None)
    _found: bool = PrivateAttr(default=False)

    @property
    def latest_model_uri(self) -> str:
        """``models:/NAME/latest`` for the configured registered model."""
        return f"models:/{self.registered_model_name}/latest"

    @property
    def champion_model_uri(self) -> str:
        """``models:/NAME@champion``: the version that passed the promotion gate last."""
        return f"models:/{self.registered_model_name}@{CHAMPION}"

    @classmethod
    def load(
        cls, path: str | os.PathLike[str] | None = None, model_name: str | None = None
    ) -> TrackingConfig:
        """Read ``path`` (default ``./mlflow.yaml`` if present, else built-in defaults).

        ``model_name`` replaces ``registered_model_name``: one store, several models side by side.
        """
        file = Path(path) if path is not None else DEFAULT_CONFIG_PATH
        data: dict[str, Any] = {}
        if file.is_file():
            data = yaml.safe_load(file.read_text()) or {}
        elif path is not None:
            raise FileNotFoundError(f"{file}: tracking config not found")
        if model_name:
            data["registered_model_name"] = model_name
        config = cls(**data)
        if os.environ.get("MLFLOW_TRACKING_URI"):
            config = config.model_copy(update={"tracking_uri": os.environ["MLFLOW_TRACKING_URI"]})
        # A relative SQLite path means the current folder *now*: MLflow keeps one store per URI
        # string for the life of the process, so a later chdir would read another folder's.
        if (db := sqlite_path(config.tracking_uri)) is not None and not db.is_absolute():
            config = config.model_copy(update={"tracking_uri": f"sqlite:///{db.resolve()}"})
        config._looked_for, config._found = file.resolve(), file.is_file()
        return config

    def origin(self) -> str:
        """Where these settings came from, for error messages."""
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return "MLFLOW_TRACKING_URI"
        if self._looked_for is None:
            return "settings given in code"
        if self._found:
            return str(self._looked_for)
        return f"built-in defaults ({self._looked_for} not found)"


def configure(config: TrackingConfig) -> str:
    """Point mlflow at the configured store and experiment; return the experiment id."""
    check_tracking_uri(config.tracking_uri)
    mlflow.set_tracking_uri(config.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(config.experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = None
        if config.artifact_location and "://" not in config.artifact_location:
            location = Path(config.artifact_location).resolve().as_uri()
        elif config.artifact_location:
            location = config.artifact_location
        experiment_id = client.create_experiment(config.experiment_name, artifact_location=location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


@dataclass(frozen=True)
class RegisteredModel:
    """Where a trained detector ended up."""

    run_id: str
    name: str
    version: str
    model_uri: str
    tracking_uri: str


def log_figure(fig: Any, name: str) -> None:
    """Log a matplotlib figure to the active run and free it."""
    import matplotlib.pyplot as plt  # imported by whoever drew ``fig``; not needed to score

    mlflow.log_figure(fig, name)
    plt.close(fig)


def hash_key(key: str) -> str:
    # Hashed so that any text (paths with quotes) is safe inside an MLflow filter string.
    return hashlib.sha256(key.encode()).hexdigest()


def finished_run(experiment_id: str, idempotency_key: str | None) -> str | None:
    """The id of a finished run logged earlier under ``idempotency_key``, if any."""
    if not idempotency_key:
        return None
    runs = MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{KEY_TAG}` = '{hash_key(idempotency_key)}' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def frame_digest(frame: pd.DataFrame) -> str:
    """Content digest of a table (values and column names, not the file layout): 16 hex digits."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class LoadedModel:
    """A detector fetched from the registry, with the name and version to stamp on outputs."""

    detector: AutoencoderDetector
    name: str
    version: str
    model_uri: str


def resolve_model_version(model_uri: str, config: TrackingConfig) -> tuple[str, str]:
    """``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``models:/NAME/latest`` -> (name, version).

    Never creates a tracking store: a missing one is a :class:`TrackingStoreError`.
    """
    require_store(config.tracking_uri, config.origin())
    configure(config)
    if not model_uri.startswith("models:/"):
        raise ValueError(f"expected a models:/ URI, got {model_uri!r}")
    client = MlflowClient()
    ref = model_uri[len("models:/") :]
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return name, str(client.get_model_version_by_alias(name, alias).version)
        name, _, version = ref.partition("/")
        if version in ("", "latest"):
            versions = client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ModelNotFoundError(
                    f"{model_uri}: no registered versions of model '{name}' in {config.tracking_uri}"
                )
            return name, str(max(int(v.version) for v in versions))
        return name, str(client.get_model_version(name, version).version)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"{model_uri}: not found in {config.tracking_uri} ({exc.message})"
        ) from exc


def load_registered_detector(
    model_uri: str, config: TrackingConfig, device: str = "auto", cache: bool = True
) -> LoadedModel:
    """Fetch a registered model's detector files and load them safely (no pyfunc code is run).

    With ``cache``, a version fetched once is read from the local cache (see
    :mod:`~anomaly.tracking.model_cache`) and checked as a download is; versions registered
    without a manifest digest are always downloaded.
    """
    from anomaly.detectors import AutoencoderDetector

    name, version = resolve_model_version(model_uri, config)
    exact = f"models:/{name}/{version}"
    tags = MlflowClient().get_model_version(name, version).tags
    digest = tags.get(MANIFEST_TAG)
    if digest is None:
        logger.warning("%s: no manifest digest recorded (registered before v0.1.1)", exact)

    def download(into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=exact, dst_path=str(into)))

    def load(local: Path) -> AutoencoderDetector:
        detector_dir = local / "artifacts" / "detector"
        if not detector_dir.is_dir():
            raise ModelFileError(
                f"{exact}: no detector files in the model artifact (expected artifacts/detector)"
            )
        if digest is not None:
            verify_digest(detector_dir, digest, exact)
        return AutoencoderDetector.load(detector_dir, device=device)

    if cache and digest is not None:
        entry = entry_path(cache_root(), config.tracking_uri, name, version, digest)
        detector = load_cached(entry, download, load)
    else:
        # The detector is read into memory whole, so the download can go once it is loaded.
        with tempfile.TemporaryDirectory(prefix="anomaly-model-") as tmp:
            detector = load(download(Path(tmp)))
    # The version's recorded threshold is what reviewers approved; a model whose files say
    # otherwise was changed after registration, whatever its manifest says.
    if "threshold" in tags and f"{detector.threshold_:.6g}" != tags["threshold"]:
        raise ModelFileError(
            f"{exact}: threshold {detector.threshold_:.6g} differs from the {tags['threshold']} "
            "recorded on the version; refusing to load"
        )
    return LoadedModel(detector, name, version, exact)


def ui_command(config: TrackingConfig) -> str:
    """The shell command that opens the MLflow UI on this store."""
    return f"mlflow ui --backend-store-uri {config.tracking_uri}"
