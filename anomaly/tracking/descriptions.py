"""Model-version descriptions: what the MLflow UI's version page says a version is.

Built from the version's own tags (``threshold``, ``quantile``, ``threshold_kind``,
``data_kind``, ``gate.*``, ...), so it is rewritten whenever they change: at registration, after
the promotion gate, after a threshold change.
"""

from __future__ import annotations

from collections.abc import Mapping

from mlflow.tracking import MlflowClient


def run_link(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """A Markdown link to a run's page in the MLflow UI.

    Against a tracking server the link is absolute; against a local store (SQLite, files) the
    UI's address is not known here, so it is relative to the UI's own routes and works from the
    version page, which is where the description is shown.
    """
    route = f"#/experiments/{experiment_id}/runs/{run_id}"
    if tracking_uri.startswith(("http://", "https://")):
        route = f"{tracking_uri.rstrip('/')}/{route}"
    return f"[{run_id}]({route})"


def version_description(tags: Mapping[str, str], run: str) -> str:
    """The Markdown description of a version with ``tags``; ``run`` is the link to its run."""
    kind = tags.get("data_kind", "unknown")
    rows = {
        # The training run, or for a threshold change the run that registered it.
        "MLflow run": run,
        "data": f"{kind}, from `{tags.get('data_source', '?')}`"
        + (f" (digest `{tags['data_digest']}`)" if tags.get("data_digest") else ""),
        "threshold": f"{tags.get('threshold', '?')} ({tags.get('threshold_kind', 'quantile')})",
        "quantile": tags.get("quantile", "?"),
        "calibration rows": tags.get("calibration_size", "?"),
    }
    if tags.get("validation_loss"):
        rows["validation loss"] = tags["validation_loss"]
    if "threshold_changed_from" in tags:
        rows["threshold changed"] = (
            f"from {tags['threshold_changed_from']} by {tags.get('threshold_changed_by', '?')}: "
            f"{tags.get('threshold_change_reason', '')}"
        )
    rows["promotion gate"] = gate_line(tags)
    title = f"**Anomaly detector for {kind} data**, threshold {tags.get('threshold', '?')}"
    lines = [title, "", "| | |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows.items()]
    return "\n".join(lines) + "\n"


def gate_line(tags: Mapping[str, str]) -> str:
    """The promotion gate's verdict and figures from a version's ``gate.*`` tags."""
    verdict = tags.get("gate.verdict")
    if verdict is None:
        if "threshold_changed_from" in tags:
            return "not run (a threshold change; the champion moves only when asked)"
        return "not run yet"
    promoted = "promoted" if tags.get("gate.promoted") == "true" else "not promoted"
    figures = (
        f"hold-out false-positive rate {_percent(tags.get('gate.false_positive_rate'))} of "
        f"{tags.get('gate.n_holdout', '?')} rows, interval {tags.get('gate.interval', '?')}; "
        f"{tags.get('gate.min_holdout', '?')} rows needed to tell"
    )
    if tags.get("gate.auroc"):
        figures += f"; AUROC {tags['gate.auroc']}"
    reasons = tags.get("gate.reasons", "none")
    return f"**{verdict}** — {promoted}: {figures}" + ("" if reasons == "none" else f"; {reasons}")


def describe_version(client: MlflowClient, name: str, version: str) -> str:
    """Write the version's description from its tags and return it."""
    entry = client.get_model_version(name, version)
    run = client.get_run(entry.run_id) if entry.run_id else None
    link = run_link(client.tracking_uri, run.info.experiment_id, run.info.run_id) if run else "none"
    text = version_description(entry.tags, link)
    client.update_model_version(name, version, description=text)
    return text


def _percent(value: str | None) -> str:
    try:
        return "?" if value is None else f"{float(value):.2%}"
    except ValueError:
        return "?"


def _cell(value: str) -> str:
    # A pipe or a line break would end the table cell early.
    return value.replace("|", "\\|").replace("\n", " ")
