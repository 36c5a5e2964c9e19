"""Safe save/load of detectors: JSON config, safetensors weights, skops preprocessor; no pickle.

A saved detector is a directory::

    detector.json           hyperparameters, schema, network config, threshold, fit info
    weights.safetensors     the network's state_dict
    calibration.safetensors sorted calibration scores (for p-values)
    preprocessor.skops      fitted scikit-learn ColumnTransformer (allowlisted types only)
    preprocessor.json       imputation medians and scaler name
    series_scaler.json      instead of the two above, for time-series detectors: scaling statistics
    manifest.json           SHA-256 of every file above, checked on load

Image detectors have no schema and no preprocessor files; ``detector.json`` records the image
shape ``(channels, height, width)`` instead.

It is written to a temporary sibling directory and renamed into place, so a crash never
leaves a half-written model where a reader would find it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file as load_torch
from safetensors.torch import save_file as save_torch

from anomaly.data.parquet import file_sha256
from anomaly.data.schema import TableSchema
from anomaly.data.series import SeriesPolicy
from anomaly.errors import ModelFileError
from anomaly.integrity import sign_manifest, verify_signature
from anomaly.models import IMAGE_MODELS, Objective
from anomaly.preprocessing import SeriesScaler, TabularPreprocessor
from anomaly.thresholds import threshold_from_saved
from anomaly.training import TrainingHistory, resolve_device

# Rebuilds a network from the model family and the config saved with it.
ModuleBuilder = Callable[[str, dict[str, Any]], torch.nn.Module]


class FittedDetector(Protocol):
    """What saving reads from a fitted detector; persistence never imports the detector itself."""

    model: str
    window: int | None
    module_: torch.nn.Module
    module_config_: dict[str, Any]
    objective_: Objective
    thresholder_: Any
    fit_info_: dict[str, Any]
    history_: TrainingHistory

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...


# Every file load_detector may read; each one present must be in the manifest.
MODEL_FILES = frozenset(
    {
        "detector.json",
        "weights.safetensors",
        "calibration.safetensors",
        "preprocessor.skops",
        "preprocessor.json",
        "series_scaler.json",
    }
)
FORMAT = "anomaly-detector"
FORMAT_VERSION = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_detector(detector: FittedDetector, path: str | os.PathLike[str]) -> Path:
    """Write ``detector`` to directory ``path`` atomically, replacing what was there."""
    from anomaly import __version__

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in detector.module_.state_dict().items()}
        save_torch(state, str(tmp / "weights.safetensors"))
        save_numpy(
            {"scores": detector.thresholder_.calibration_scores_},
            str(tmp / "calibration.safetensors"),
        )
        image = detector.model in IMAGE_MODELS  # no preprocessor; the shape is in detector.json
        if not image and detector.window is None:
            detector.preprocessor_.save(tmp)  # type: ignore[attr-defined]
        elif not image:
            scaler = detector.scaler_  # type: ignore[attr-defined]
            (tmp / "series_scaler.json").write_text(json.dumps(scaler.to_dict()))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "anomaly_version": __version__,
            "class": type(detector).__name__,
            "params": _jsonable(detector.get_params()),
            "schema": None if image else detector.schema_.to_dict(),  # type: ignore[attr-defined]
            **({"image_shape": list(detector.image_shape_)} if image else {}),  # type: ignore[attr-defined]
            "module_config": _jsonable(detector.module_config_),
            "objective": asdict(detector.objective_),
            "threshold": detector.thresholder_.to_dict(),
            "fit_info": _jsonable(detector.fit_info_),
            "series": None
            if detector.window is None
            else {
                "policy": asdict(detector.series_policy_),  # type: ignore[attr-defined]
                "frequency": detector.frequency_,  # type: ignore[attr-defined]
            },
            "history": _jsonable(asdict(detector.history_)),
        }
        (tmp / "detector.json").write_text(json.dumps(config, indent=2))
        manifest = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        sign_manifest(tmp)
        # A directory cannot be renamed over a non-empty one: move the old model aside first,
        # and put it back if the new one cannot take its place.
        old = None
        if target.exists():
            if not (target / "manifest.json").is_file() or not (target / "detector.json").is_file():
                raise ModelFileError(
                    f"{target}: exists and is not a saved detector; refusing to replace it"
                )
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old, target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _verify(directory: Path) -> dict[str, Any]:
    if not directory.is_dir():
        raise ModelFileError(f"{directory}: not a saved detector directory")
    verify_signature(directory)
    manifest_path = directory / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{manifest_path}: missing or unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in manifest.items()
    ):
        raise ModelFileError(f"{manifest_path}: expected a JSON object of file name to SHA-256")
    # Every file the loader reads is covered: an emptied or partial manifest would otherwise
    # check nothing. Other files (a README, .DS_Store) are never read, so they are let be.
    present = {p.name for p in directory.iterdir() if p.name in MODEL_FILES}
    if unlisted := sorted(present - set(manifest)):
        raise ModelFileError(f"{directory / unlisted[0]}: not listed in the manifest")
    for name, expected in manifest.items():
        if Path(name).name != name or name in ("", ".", "..", "manifest.json"):
            raise ModelFileError(f"{manifest_path}: entry {name!r} is not a file of the model")
        file = directory / name
        if not file.is_file():
            raise ModelFileError(f"{file}: listed in the manifest but missing")
        if file_sha256(file) != expected:
            raise ModelFileError(
                f"{file}: checksum does not match the manifest (truncated or modified)"
            )
    try:
        config = json.loads((directory / "detector.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{directory / 'detector.json'}: unreadable ({exc})") from exc
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{directory}: expected format {FORMAT} v{FORMAT_VERSION}, "
            f"found {config.get('format')} v{config.get('format_version')}"
        )
    return config


def load_fitted(
    path: str | os.PathLike[str], rebuild: ModuleBuilder, device: str = "auto"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a detector written by :func:`save_detector`, checking every file's checksum first.

    Returns the constructor parameters and the fitted attributes (``module_``, ``threshold_``
    ...) for the detector class to set; ``rebuild`` makes the network from its saved config.
    """
    directory = Path(path)
    config = _verify(directory)
    try:
        return _fitted(directory, config, rebuild, device)
    except ModelFileError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        # A detector.json that parses but lacks an entry or holds the wrong kind of value.
        raise ModelFileError(
            f"{directory / 'detector.json'}: missing or invalid entry ({type(exc).__name__}: {exc})"
        ) from exc


def _fitted(
    directory: Path, config: dict[str, Any], rebuild: ModuleBuilder, device: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    params = dict(config["params"])
    params["device"] = device
    image = params.get("model") in IMAGE_MODELS
    schema = None if image else TableSchema.from_dict(config["schema"])
    weights, calibration_file = (
        directory / "weights.safetensors",
        directory / "calibration.safetensors",
    )
    module_config = config["module_config"]
    try:
        module = rebuild(params["model"], module_config)
        module.load_state_dict(load_torch(str(weights)))
    except (RuntimeError, OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise ModelFileError(
            f"{weights}: weights do not match the saved configuration ({exc})"
        ) from exc
    try:
        calibration = load_numpy(str(calibration_file))["scores"]
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise ModelFileError(f"{calibration_file}: expected one tensor 'scores' ({exc})") from exc
    objective = Objective(**config["objective"])
    threshold = threshold_from_saved(config["threshold"], calibration)
    if threshold.threshold_ != config["threshold"]["threshold"]:
        raise ModelFileError(
            f"{calibration_file}: calibration scores do not reproduce the saved threshold"
        )

    fitted: dict[str, Any] = {"schema_": schema}
    if schema is None:
        fitted["preprocessor_"] = None
    elif params.get("window") is None:
        fitted["preprocessor_"] = TabularPreprocessor.load(directory, schema)
    else:
        scaler_file = directory / "series_scaler.json"
        try:
            fitted["scaler_"] = SeriesScaler.from_dict(json.loads(scaler_file.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelFileError(f"{scaler_file}: unreadable series scaler ({exc})") from exc
        try:
            series = config["series"]
            policy = series["policy"]
            fitted["series_policy_"] = SeriesPolicy(
                **{**policy, "features": tuple(policy["features"])}
            )
            fitted["frequency_"] = series["frequency"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(
                f"{directory / 'detector.json'}: time-series settings unreadable ({exc})"
            ) from exc
        fitted["preprocessor_"] = None
    fitted["device_"] = resolve_device(device)
    fitted["module_"] = module.to(fitted["device_"]).eval()
    fitted["module_config_"] = config["module_config"]
    fitted["objective_"] = objective
    fitted["thresholder_"] = threshold
    fitted["threshold_"] = threshold.threshold_
    fitted["fit_info_"] = config["fit_info"]
    history = config["history"]
    fitted["history_"] = TrainingHistory(
        **{
            **history,
            "train_loss": tuple(history["train_loss"]),
            "val_loss": tuple(history["val_loss"]),
        }
    )
    if schema is None:
        channels, height, width = (int(v) for v in config["image_shape"])
        fitted["image_shape_"] = (channels, height, width)
        fitted["n_features_in_"] = channels * height * width
        return params, fitted
    fitted["n_features_in_"] = len(schema.features)
    fitted["feature_names_in_"] = np.asarray(schema.feature_names, dtype=object)
    return params, fitted
