"""Typed run settings, loaded at the edge (CLI options, YAML files, Prefect flow parameters)."""

from __future__ import annotations

import inspect
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

from anomaly.detectors import AutoencoderDetector
from anomaly.monitoring import GateSettings


def _detector_settings_model() -> type[BaseModel]:
    # Built from AutoencoderDetector's signature so the two can never drift apart.
    hints = typing.get_type_hints(AutoencoderDetector.__init__)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(AutoencoderDetector.__init__).parameters.items():
        if name == "self":
            continue
        annotation = hints[name]
        default = param.default
        if isinstance(default, tuple):
            default = list(default)
            annotation = list[str]
        fields[name] = (annotation, default)
    return create_model(
        "DetectorSettings",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Hyperparameters of AutoencoderDetector (see its docstring).",
        **fields,
    )


DetectorSettings: Any = _detector_settings_model()


class TrainSettings(BaseModel):
    """Everything a training run needs besides the data location."""

    model_config = ConfigDict(extra="forbid")

    detector: DetectorSettings = Field(default_factory=DetectorSettings)
    quantile: float = Field(
        0.95, gt=0, lt=1, description="Threshold quantile of calibration errors"
    )
    validation_fraction: float = Field(
        0.1, ge=0, lt=1, description="Share of normal rows for early stopping"
    )
    calibration_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of normal rows for the threshold"
    )
    gate: GateSettings = Field(
        default_factory=GateSettings,
        description="Promotion gate: hold-out share, interval confidence, optional AUROC floor",
    )

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainSettings:
        """Read settings from a YAML file; unknown keys are an error."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**data)

    def build_detector(self) -> AutoencoderDetector:
        return AutoencoderDetector(**self.detector.model_dump())
