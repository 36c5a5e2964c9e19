"""Model versions after training: the champion alias, recorded settings, threshold changes."""

from __future__ import annotations

import getpass
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from anomaly import plots
from anomaly.integrity import MANIFEST_TAG, manifest_digest
from anomaly.tracking.descriptions import describe_version
from anomaly.tracking.store import (
    CHAMPION,
    TRAIN_SETTINGS_ARTIFACT,
    LoadedModel,
    RegisteredModel,
    TrackingConfig,
    configure,
    log_figure,
)
from anomaly.tracking.training_run import PYFUNC_ENTRY, requirements

if TYPE_CHECKING:
    from anomaly.detectors import AutoencoderDetector
    from anomaly.monitoring import GateResult

logger = logging.getLogger(__name__)


def promote(
    model: RegisteredModel,
    gate: GateResult,
    config: TrackingConfig,
    alias: str = CHAMPION,
) -> bool:
    """Record the promotion gate on the training run and the version; move ``alias`` if promoted.

    The gate's figures go to the run as ``gate_*`` metrics and ``review/gate.json``, and to the
    model version as ``gate.*`` tags (``gate.verdict``: passed, failed or inconclusive;
    ``gate.promoted``). A version not promoted leaves the alias where it was, so the serving
    model (``models:/NAME@champion``) is never replaced by a version that failed or could not
    be told apart from a bad one.
    """
    configure(config)
    client = MlflowClient()
    figures = {
        "gate_passed": float(gate.passed),
        "gate_promoted": float(gate.promoted),
        "gate_false_positive_rate": gate.false_positive_rate,
        "gate_ci_low": gate.ci_low,
        "gate_ci_high": gate.ci_high,
        "gate_n_holdout": gate.n_holdout,
        "gate_min_holdout": gate.min_holdout,
        **({"gate_auroc": gate.auroc} if gate.auroc is not None else {}),
    }
    stamp = int(pd.Timestamp.now(tz="UTC").timestamp() * 1000)
    client.log_batch(
        model.run_id, metrics=[mlflow.entities.Metric(k, v, stamp, 0) for k, v in figures.items()]
    )
    client.log_text(model.run_id, json.dumps(gate.as_dict(), indent=1), "review/gate.json")
    for key, value in gate_tags(gate).items():
        client.set_model_version_tag(model.name, model.version, key, value)
    describe_version(client, model.name, model.version)
    if gate.promoted:
        client.set_registered_model_alias(model.name, alias, model.version)
        log = logger.warning if gate.verdict == "inconclusive" else logger.info
        log(
            "%s gate %s: alias %s -> version %s",
            model.model_uri,
            gate.summary(),
            alias,
            model.version,
        )
    else:
        logger.warning("%s gate %s; alias %s unchanged", model.model_uri, gate.summary(), alias)
    return gate.promoted


def gate_tags(gate: GateResult) -> dict[str, str]:
    """The ``gate.*`` tags of a model version: the verdict and its figures, as text."""
    return {
        "gate.verdict": gate.verdict,
        "gate.promoted": str(gate.promoted).lower(),
        "gate.passed": str(gate.passed).lower(),
        "gate.false_positive_rate": f"{gate.false_positive_rate:.4g}",
        "gate.interval": f"[{gate.ci_low:.4g}, {gate.ci_high:.4g}] at {gate.confidence:g}",
        "gate.n_holdout": str(gate.n_holdout),
        "gate.min_holdout": str(gate.min_holdout),
        "gate.auroc": "" if gate.auroc is None else f"{gate.auroc:.4f}",
        "gate.reasons": "; ".join(gate.reasons) or "none",
    }


def recorded_train_settings(
    name: str, version: str, config: TrackingConfig
) -> dict[str, Any] | None:
    """The training settings a version's run recorded, or None (a version registered before)."""
    configure(config)
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    try:
        loaded = mlflow.artifacts.load_dict(f"runs:/{run_id}/{TRAIN_SETTINGS_ARTIFACT}")
    except (MlflowException, OSError):
        return None
    return dict(loaded)


def alias_version(name: str, alias: str, config: TrackingConfig) -> str | None:
    """The version ``models:/NAME@ALIAS`` points at, or None when the alias is not set."""
    configure(config)
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def register_threshold_change(
    source: LoadedModel,
    detector: AutoencoderDetector,
    reason: str,
    config: TrackingConfig,
    changed_by: str | None = None,
    alias: str | None = None,
) -> RegisteredModel:
    """Register ``detector`` (``source``'s network with a new threshold) as a new version.

    The source version is left as it was. The new version carries the source's data tags, the
    new threshold and quantile, and who changed it and why; a run of type ``threshold-change``
    holds the old and new figures and the calibration histogram. ``alias`` (e.g. ``champion``)
    is moved to the new version only when given.
    """
    configure(config)
    client = MlflowClient()
    who = changed_by or getpass.getuser()
    old = source.detector.thresholder_
    new = detector.thresholder_
    info = mlflow.models.get_model_info(source.model_uri)
    source_tags = client.get_model_version(source.name, source.version).tags
    with mlflow.start_run(
        run_name=f"threshold {source.name} v{source.version}",
        tags={
            "anomaly.run_type": "threshold-change",
            "anomaly.changed_by": who,
            "anomaly.reason": reason,
        },
    ) as run:
        mlflow.log_params(
            {
                "source_model_uri": source.model_uri,
                "old_threshold": f"{old.threshold_:.6g}",
                "old_quantile": str(old.q),
                "new_threshold": f"{new.threshold_:.6g}",
                "new_quantile": str(new.q),
                "changed_by": who,
                "reason": reason[:500],
            }
        )
        mlflow.log_metrics(
            {
                "threshold": new.threshold_,
                "quantile": new.q,
                "calibration_size": len(new.calibration_scores_),
                "share_of_calibration_above": float(
                    (new.calibration_scores_ > new.threshold_).mean()
                ),
            }
        )
        log_figure(
            plots.score_histogram(new.calibration_scores_, new.threshold_, new.q),
            "plots/calibration_histogram.png",
        )
        with tempfile.TemporaryDirectory() as tmp:
            saved = Path(tmp) / "detector"
            detector.save(saved)
            digest = manifest_digest(saved)
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_ENTRY),
                artifacts={"detector": str(saved)},
                code_paths=[str(Path(__file__).parent)],
                signature=info.signature,
                registered_model_name=source.name,
                pip_requirements=requirements(),
            )
    version = str(logged.registered_model_version)
    client.set_tag(
        run.info.run_id,
        "mlflow.runName",
        f"threshold {source.name} v{source.version} -> v{version} ({new.threshold_:.6g})",
    )
    client.set_tag(run.info.run_id, "anomaly.created_version", version)
    carried = {
        k: v for k, v in source_tags.items() if k.startswith("data_") or k == "validation_loss"
    }
    for key, value in {
        **carried,
        "threshold": f"{new.threshold_:.6g}",
        "quantile": str(new.q),
        "calibration_size": str(len(new.calibration_scores_)),
        "run_id": run.info.run_id,
        "threshold_changed_from": f"{source.model_uri} ({old.threshold_:.6g}, q={old.q:g})",
        "threshold_changed_by": who,
        "threshold_change_reason": reason,
        "threshold_kind": str(new.to_dict()["kind"]),
        MANIFEST_TAG: digest,
    }.items():
        client.set_model_version_tag(source.name, version, key, value)
    describe_version(client, source.name, version)
    if alias:
        client.set_registered_model_alias(source.name, alias, version)
    model_uri = f"models:/{source.name}/{version}"
    logger.info(
        "registered %s with threshold %.6g (was %.6g)", model_uri, new.threshold_, old.threshold_
    )
    return RegisteredModel(
        run.info.run_id, source.name, version, model_uri, mlflow.get_tracking_uri()
    )
