"""Statistics for unattended runs: batch monitoring with alerts, and the promotion gate.

Pure functions of score arrays; no files, no MLflow, no Prefect. The flows and
:mod:`anomaly.tracking` decide what to do with the results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

QUANTILE_LEVELS = (0.5, 0.9, 0.95, 0.99, 0.999)


def quantile_table(
    scores: np.ndarray, levels: tuple[float, ...] = QUANTILE_LEVELS
) -> dict[str, float]:
    """``{"p50": ..., "p99_9": ...}``: empirical quantiles of ``scores`` ``(n,)``, named for MLflow keys."""
    values = np.asarray(scores, dtype=np.float64)
    if not len(values):
        return {}
    return {f"p{lv * 100:g}".replace(".", "_"): float(np.quantile(values, lv)) for lv in levels}


def population_stability_index(
    reference: np.ndarray, observed: np.ndarray, bins: int = 10
) -> float:
    """PSI of ``observed`` ``(m,)`` against ``reference`` ``(n,)`` on the reference's decile bins.

    ``sum((o - r) * ln(o / r))`` over bins; a floor of 1e-4 per bin share keeps empty bins
    finite. Conventional reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
    """
    ref = np.asarray(reference, dtype=np.float64)
    obs = np.asarray(observed, dtype=np.float64)
    if not len(ref) or not len(obs):
        return 0.0
    # Interior edges only: the outer bins are open, so batch scores beyond the calibration range
    # (the interesting ones) still land in a bin.
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=len(edges) + 1)
    o = np.bincount(np.searchsorted(edges, obs, side="right"), minlength=len(edges) + 1)
    r_share = np.maximum(r / r.sum(), 1e-4)
    o_share = np.maximum(o / o.sum(), 1e-4)
    return float(np.sum((o_share - r_share) * np.log(o_share / r_share)))


class AlertSettings(BaseModel):
    """When a scored batch raises an alert."""

    model_config = ConfigDict(extra="forbid")

    rate_level: float = Field(
        0.001,
        gt=0,
        lt=1,
        description="Significance level of the one-sided binomial test 'anomaly rate > 1 - quantile'",
    )
    psi_limit: float = Field(
        0.25,
        gt=0,
        description="Alert when the PSI of batch scores vs calibration scores exceeds this",
    )
    min_rows: int = Field(
        20, ge=1, description="Batches with fewer scored rows are reported but never alert"
    )


@dataclass(frozen=True)
class BatchReport:
    """Monitoring figures of one scored batch against the model's calibration scores.

    ``alerts`` lists the reasons for an alert in words (empty: no alert).
    """

    rows_scored: int
    rows_rejected: int
    rows_flagged: int
    anomaly_rate: float
    expected_rate: float
    rate_p_value: float
    ks_statistic: float
    ks_p_value: float
    psi: float
    score_quantiles: dict[str, float]
    alerts: tuple[str, ...] = field(default=())

    @property
    def alert(self) -> bool:
        return bool(self.alerts)

    def metrics(self) -> dict[str, float]:
        """Flat numeric figures for a tracking store."""
        out = {
            k: float(v)
            for k, v in asdict(self).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        out |= {f"score_{k}": v for k, v in self.score_quantiles.items()}
        out["alert"] = float(self.alert)
        return out


def monitor_batch(
    scores: np.ndarray,
    calibration_scores: np.ndarray,
    threshold: float,
    quantile: float,
    rows_rejected: int = 0,
    settings: AlertSettings | None = None,
    counts: tuple[int, int] | None = None,
) -> BatchReport:
    """Compare a batch's scores ``(n,)`` with the calibration scores ``(n_cal,)`` it was thresholded on.

    Rate alert: a one-sided exact binomial test of ``#(score > threshold)`` against the expected
    false-positive rate ``1 - quantile``; the conformal threshold guarantees at most that rate on
    normal data, so a small p-value means more anomalies than chance explains. Drift alert: the
    PSI of the batch's scores against the calibration scores exceeds ``settings.psi_limit``. The
    two-sample KS statistic is reported beside it.

    ``counts``: ``(rows scored, rows flagged)`` of the whole batch when ``scores`` is a sample of
    it (a streamed batch keeps a bounded uniform sample); the rate test then uses the exact
    counts, and the drift figures the sample.
    """
    settings = settings or AlertSettings()
    values = np.asarray(scores, dtype=np.float64)
    cal = np.asarray(calibration_scores, dtype=np.float64)
    n = len(values)
    flagged = int((values > threshold).sum())
    if counts is not None:
        n, flagged = counts
    expected = 1.0 - quantile
    rate_p, ks_stat, ks_p = 1.0, 0.0, 1.0
    if n:
        rate_p = float(stats.binomtest(flagged, n, expected, alternative="greater").pvalue)
    if len(values):
        ks = stats.ks_2samp(values, cal)
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    psi = population_stability_index(cal, values)
    alerts: list[str] = []
    if n >= settings.min_rows:
        if rate_p < settings.rate_level:
            alerts.append(
                f"anomaly rate {flagged / n:.2%} ({flagged} of {n}) is above the expected "
                f"{expected:.2%} (binomial p = {rate_p:.2g} < {settings.rate_level:g})"
            )
        if psi > settings.psi_limit:
            alerts.append(
                f"score drift: PSI {psi:.3f} against calibration exceeds {settings.psi_limit:g}"
            )
    return BatchReport(
        rows_scored=n,
        rows_rejected=rows_rejected,
        rows_flagged=flagged,
        anomaly_rate=flagged / n if n else 0.0,
        expected_rate=expected,
        rate_p_value=rate_p,
        ks_statistic=ks_stat,
        ks_p_value=ks_p,
        psi=psi,
        score_quantiles=quantile_table(values),
        alerts=tuple(alerts),
    )


class GateSettings(BaseModel):
    """Checks a newly trained version must pass before it becomes the serving (``champion``) model."""

    model_config = ConfigDict(extra="forbid")

    holdout_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of normal rows kept out of training entirely to check the threshold",
    )
    confidence: float = Field(
        0.99,
        gt=0,
        lt=1,
        description="Confidence of the Clopper-Pearson interval of the hold-out false-positive rate",
    )
    max_rate_factor: float = Field(
        2.0,
        gt=1,
        description=(
            "The hold-out must be large enough to refuse a model whose false-positive rate is this "
            "many times the target 1 - quantile; a smaller one gives the verdict 'inconclusive'"
        ),
    )
    min_holdout: int | None = Field(
        None,
        ge=0,
        description=(
            "Hold-out rows needed for a conclusive verdict; None derives it from the quantile, "
            "the confidence and max_rate_factor (see min_holdout_size)"
        ),
    )
    allow_inconclusive: bool = Field(
        False,
        description="Promote a version whose hold-out was too small to tell (not advised)",
    )
    auroc_floor: float | None = Field(
        None, ge=0, le=1, description="Minimum AUROC on labelled validation data, when given"
    )
    label_column: str = Field(
        "is_anomaly_label", description="Boolean/0-1 column of the labelled validation data"
    )


Verdict = Literal["passed", "failed", "inconclusive"]


@dataclass(frozen=True)
class GateResult:
    """Outcome of the promotion gate.

    ``verdict``: ``passed``; ``failed`` (the figures speak against the version); or
    ``inconclusive`` (nothing spoke against it, but the hold-out was smaller than
    ``min_holdout``, too small to have refused a bad version). ``promoted``: whether the version
    becomes the champion. ``reasons`` says in words what kept it from a plain pass, and why it
    was promoted all the same where it was (empty when it passed).
    """

    verdict: Verdict
    promoted: bool
    n_holdout: int
    false_positives: int
    false_positive_rate: float
    target_rate: float
    ci_low: float
    ci_high: float
    confidence: float
    min_holdout: int = 0
    auroc: float | None = None
    auroc_floor: float | None = None
    reasons: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed}

    def summary(self) -> str:
        """One line for a console or a log: the verdict, what it did, and the hold-out figures."""
        done = "now champion" if self.promoted else "champion unchanged"
        if self.verdict == "inconclusive":
            done = "promoted" if self.promoted else "not promoted"
        figures = (
            f"hold-out false-positive rate {self.false_positive_rate:.2%} of {self.n_holdout} "
            f"rows (interval [{self.ci_low:.2%}, {self.ci_high:.2%}], target "
            f"{self.target_rate:.2%})"
        )
        auroc = "" if self.auroc is None else f", AUROC {self.auroc:.3f}"
        return f"{self.verdict} — {done}: {figures}{auroc}" + "".join(
            f"; {r}" for r in self.reasons
        )


def min_holdout_size(
    quantile: float, confidence: float = 0.99, max_rate_factor: float = 2.0
) -> int:
    """The smallest hold-out on which the gate refuses a model at ``max_rate_factor`` times the target.

    A hold-out of ``n`` normal rows that shows the false-positive rate
    ``limit = max_rate_factor * (1 - quantile)`` (``floor(limit * n)`` rows over the threshold)
    is refused when the lower end of its exact ``confidence`` interval lies above the target
    ``1 - quantile``. Below this size even such a bad model would pass, so a pass means nothing:
    e.g. 180 rows for ``quantile=0.95`` at 99% and a factor of 2, 950 for ``quantile=0.99``.
    """
    target = 1.0 - quantile
    limit = min(max_rate_factor * target, 1.0)
    alpha = (1.0 - confidence) / 2
    # Scanned in doubling blocks, vectorised: the answer grows like 1/target, 10^3 to 10^5 rows.
    start, size = 1, 256
    while True:
        n = np.arange(start, start + size)
        k = np.floor(limit * n + 1e-9)
        with np.errstate(invalid="ignore"):
            # The Clopper-Pearson lower bound; zero when no row is over the threshold.
            low = np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
        if len(hits := np.flatnonzero(low > target)):
            return int(n[hits[0]])
        start, size = start + size, size * 2


def promotion_gate(
    holdout_scores: np.ndarray,
    threshold: float,
    quantile: float,
    settings: GateSettings | None = None,
    labelled_scores: np.ndarray | None = None,
    labels: np.ndarray | None = None,
) -> GateResult:
    """Check a threshold on normal rows it has never seen, and optionally ranking on labelled rows.

    Fails when the target false-positive rate ``1 - quantile`` lies outside the exact
    (Clopper-Pearson) confidence interval of the hold-out rate ``#(score > threshold) / n`` for
    ``holdout_scores`` ``(n,)``, or, when ``settings.auroc_floor`` is set and labelled scores
    ``(m,)`` with labels ``(m,)`` (True = anomaly) are given, their AUROC is below the floor.
    Otherwise it passes when ``n`` reaches ``settings.min_holdout`` (by default
    :func:`min_holdout_size`), and is inconclusive below that: the interval is then so wide that
    a model flagging ``max_rate_factor`` times too many normal rows would have passed as well.
    An inconclusive version is promoted only with ``settings.allow_inconclusive``.
    """
    settings = settings or GateSettings()
    values = np.asarray(holdout_scores, dtype=np.float64)
    n = len(values)
    target = 1.0 - quantile
    needed = (
        settings.min_holdout
        if settings.min_holdout is not None
        else min_holdout_size(quantile, settings.confidence, settings.max_rate_factor)
    )
    failures: list[str] = []
    if n == 0:
        k, low, high = 0, 0.0, 1.0
    else:
        k = int((values > threshold).sum())
        ci = stats.binomtest(k, n, target).proportion_ci(settings.confidence, method="exact")
        low, high = float(ci.low), float(ci.high)
        if not low <= target <= high:
            failures.append(
                f"hold-out false-positive rate {k / n:.2%} ({k} of {n}); its "
                f"{settings.confidence:.0%} interval [{low:.2%}, {high:.2%}] excludes the target "
                f"{target:.2%}"
            )
    auroc = None
    if labelled_scores is not None and labels is not None:
        y = np.asarray(labels).astype(bool)
        if y.all() or not y.any():
            failures.append("labelled validation data needs both normal and anomalous rows")
        else:
            # Imported here: sklearn.metrics is a few hundred ms that scoring never needs.
            from sklearn.metrics import roc_auc_score

            auroc = float(roc_auc_score(y, np.asarray(labelled_scores, dtype=np.float64)))
            if settings.auroc_floor is not None and auroc < settings.auroc_floor:
                failures.append(f"AUROC {auroc:.3f} below the floor {settings.auroc_floor:g}")
    elif settings.auroc_floor is not None:
        failures.append(
            f"an AUROC floor of {settings.auroc_floor:g} is set but no labelled data given"
        )
    verdict: Verdict = "failed" if failures else "passed"
    reasons = failures
    if not failures and n < needed:
        verdict = "inconclusive"
        limit = min(settings.max_rate_factor * target, 1.0)
        reasons = [
            f"{n} hold-out rows are too few to tell; at least {needed} are needed "
            f"to refuse a false-positive rate of {limit:.2%} ({settings.max_rate_factor:g}x the "
            f"target {target:.2%}) at {settings.confidence:.0%} confidence"
        ]
        if settings.allow_inconclusive:
            reasons.append("promoted all the same: gate.allow_inconclusive is set")
    return GateResult(
        verdict=verdict,
        promoted=verdict == "passed" or (verdict == "inconclusive" and settings.allow_inconclusive),
        n_holdout=n,
        false_positives=k,
        false_positive_rate=k / n if n else 0.0,
        target_rate=target,
        ci_low=low,
        ci_high=high,
        confidence=settings.confidence,
        min_holdout=needed,
        auroc=auroc,
        auroc_floor=settings.auroc_floor,
        reasons=tuple(reasons),
    )
