"""Threshold calibration on held-out normal scores, and conformal or tail-fitted p-values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import optimize, stats

from anomaly.errors import CalibrationError, NotFittedError, TailTooShortError

# Threshold kinds a detector can calibrate (``AutoencoderDetector(threshold=...)``).
THRESHOLDS: tuple[str, ...] = ("quantile", "pot")
# POT defaults: the tail starts at the 0.9 quantile, and 20 excesses is about the least on which
# a two-parameter GPD fit is more than noise (the usual rule of thumb in extreme-value work).
POT_TAIL_QUANTILE = 0.9
POT_MIN_EXCESSES = 20


def min_calibration_size(q: float, kind: str = "quantile") -> int:
    """Smallest calibration set a threshold of ``kind`` at ``q`` can be fitted on.

    ``"quantile"``: the conformal ``q``-quantile exists from ``ceil(q / (1 - q))`` scores.
    ``"pot"``: the tail above the 0.9 quantile must hold :data:`POT_MIN_EXCESSES` scores.

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`THRESHOLDS`.
    """
    if kind == "pot":
        return math.ceil(POT_MIN_EXCESSES / (1.0 - POT_TAIL_QUANTILE) - 1e-9)
    if kind != "quantile":
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {kind!r}")
    return math.ceil(q / (1.0 - q) - 1e-9)


def calibration_need(kind: str, q: float) -> str:
    """How a calibration-size error opens: ``"quantile 0.95 needs at least 19"``, or for POT."""
    needed = min_calibration_size(q, kind)
    if kind == "pot":
        return (
            f"a POT threshold at quantile {q} ({POT_MIN_EXCESSES} scores above the "
            f"{POT_TAIL_QUANTILE:g} quantile) needs at least {needed}"
        )
    return f"quantile {q} needs at least {needed}"


def make_threshold(kind: str, q: float) -> QuantileThreshold:
    """An unfitted threshold of ``kind`` (one of :data:`THRESHOLDS`) at quantile ``q``."""
    if kind == "pot":
        return PotThreshold(q)
    if kind != "quantile":
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {kind!r}")
    return QuantileThreshold(q)


class QuantileThreshold:
    """Threshold at the ``q``-quantile of calibration scores of normal data.

    Uses the conformal order statistic: the ``ceil((n + 1) q)``-th smallest of ``n`` calibration
    scores. For a new normal sample exchangeable with the calibration set, the chance of scoring
    above it is at most ``1 - q`` (and at least ``1 - q - 1 / (n + 1)``), which is what makes the
    false-positive rate predictable. Refuses a ``q`` that ``n`` cannot resolve.

    Scoring never changes the threshold; only :meth:`fit` sets it.

    Parameters
    ----------
    q : float
        Target quantile in (0, 1): the expected share of normal samples below the threshold.
    """

    def __init__(self, q: float = 0.95):
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {q}")
        self.q = q

    def fit(self, calibration_scores: np.ndarray) -> QuantileThreshold:
        """Set ``threshold_`` from scores of held-out normal samples.

        Raises
        ------
        CalibrationError
            If there are too few scores for the quantile, or any score is not finite.
        """
        scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        n = len(scores)
        needed = min_calibration_size(self.q)
        if n < needed:
            raise CalibrationError(
                f"quantile {self.q} needs at least {needed} calibration samples, got {n}; "
                f"lower the quantile or give more normal data (or a larger calibration_fraction)"
            )
        if not np.isfinite(scores).all():
            raise CalibrationError(
                f"{int((~np.isfinite(scores)).sum())} calibration scores are not finite"
            )
        rank = math.ceil((n + 1) * self.q - 1e-9)
        self.calibration_scores_ = scores
        self.threshold_ = float(scores[rank - 1])
        return self

    def _check(self) -> None:
        if not hasattr(self, "threshold_"):
            raise NotFittedError(
                "QuantileThreshold is not fitted; call fit with calibration scores"
            )

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """``True`` where a score is above the threshold."""
        self._check()
        return np.asarray(scores) > self.threshold_

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values ``(1 + #{calibration >= s}) / (n + 1)``, in ``(0, 1]``.

        Small means anomalous. On fresh normal data they are roughly uniform.
        """
        self._check()
        cal = self.calibration_scores_
        n = len(cal)
        at_least = n - np.searchsorted(cal, np.asarray(scores, dtype=np.float64), side="left")
        return (1.0 + at_least) / (n + 1.0)

    def quantiles(
        self, levels: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99, 0.999)
    ) -> dict[float, float]:
        """Empirical quantiles of the calibration scores, for review."""
        self._check()
        return {lv: float(np.quantile(self.calibration_scores_, lv)) for lv in levels}

    def to_dict(self) -> dict[str, Any]:
        self._check()
        return {
            "kind": "quantile",
            "q": self.q,
            "threshold": self.threshold_,
            "n_calibration": len(self.calibration_scores_),
        }


class FixedThreshold(QuantileThreshold):
    """A threshold set to a chosen value by a reviewer, with the calibration scores kept.

    ``q`` becomes the conformal coverage of the value, ``#{calibration <= value} / (n + 1)``,
    so ``1 - q`` is still the false-positive rate to expect on normal data, and p-values are
    unchanged.

    Parameters
    ----------
    value : float
        The threshold; scores above it are flagged.
    """

    def __init__(self, value: float):
        if not np.isfinite(value):
            raise ValueError(f"threshold value must be finite, got {value}")
        self.value = float(value)

    def fit(self, calibration_scores: np.ndarray) -> FixedThreshold:
        """Keep the calibration scores and set ``threshold_ = value`` and its coverage ``q``."""
        scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if not len(scores) or not np.isfinite(scores).all():
            raise CalibrationError("a fixed threshold needs finite calibration scores")
        self.calibration_scores_ = scores
        self.threshold_ = self.value
        self.q = float(np.searchsorted(scores, self.value, side="right") / (len(scores) + 1))
        return self

    def to_dict(self) -> dict[str, Any]:
        return super().to_dict() | {"kind": "fixed"}


def threshold_from_dict(config: dict[str, Any]) -> QuantileThreshold:
    """An unfitted threshold object from the ``to_dict`` of a saved one."""
    kind = config.get("kind", "quantile")
    if kind == "fixed":
        return FixedThreshold(config["threshold"])
    if kind == "pot":
        return PotThreshold(
            config["q"],
            tail_quantile=config["tail_quantile"],
            min_excesses=config["min_excesses"],
            confidence=config["confidence"],
        )
    return QuantileThreshold(config["q"])


def threshold_from_saved(
    config: dict[str, Any], calibration_scores: np.ndarray
) -> QuantileThreshold:
    """A fitted threshold from its ``to_dict`` and the saved calibration scores.

    Quantile and fixed thresholds are refitted (an order statistic: exact on any machine). A POT
    fit is restored from the saved parameters instead, after checking the scores give the same
    tail, so a model loads identically whatever optimiser version would refit it.
    """
    threshold = threshold_from_dict(config)
    if isinstance(threshold, PotThreshold):
        return threshold.restore(calibration_scores, config)
    return threshold.fit(calibration_scores)


def _gpd_nll(shape: np.ndarray, scale: np.ndarray, excesses: np.ndarray) -> np.ndarray:
    """Negative GPD log-likelihood (``loc=0``) for arrays of ``shape`` and ``scale``; inf off support."""
    c = np.asarray(shape, dtype=np.float64)[..., None]
    s = np.asarray(scale, dtype=np.float64)[..., None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = c * excesses / s
        near_zero = np.abs(c) < 1e-9
        # The c -> 0 limit is the exponential: (1 + 1/c) log1p(c x / s) -> x / s.
        body = np.where(
            near_zero, excesses / s, (1.0 + 1.0 / np.where(near_zero, 1.0, c)) * np.log1p(z)
        )
        nll = (np.log(s) + body).sum(axis=-1)
        bad = (s[..., 0] <= 0) | ~np.isfinite(nll) | ((1.0 + z) <= 0).any(axis=-1)
    return np.where(bad, np.inf, nll)


class PotThreshold(QuantileThreshold):
    """Peaks-over-threshold: a generalized Pareto tail fitted above a high empirical quantile.

    The largest ``floor(n (1 - tail_quantile))`` calibration scores are the tail; their excesses
    over ``u`` (the largest score not in the tail) are fitted by maximum likelihood with
    :func:`scipy.stats.genpareto` (``loc=0``). With ``zeta`` the share of scores in the tail, the
    threshold is ``u + genpareto.ppf(1 - (1 - q) / zeta)``, which resolves quantiles the
    calibration size cannot (0.999 from 1,000 scores). ``interval_`` is a profile-likelihood
    interval for the threshold at ``confidence`` (``inf`` above when the data cannot bound it);
    it takes the fitted share ``zeta`` as known. Above ``u``, p-values come from the fitted tail,
    ``zeta * genpareto.sf(s - u)``, so they go below ``1 / (n + 1)``; below ``u`` they are the
    conformal ones. Beyond the end of a bounded tail (shape < 0) they are the smallest positive
    float, not 0.

    Parameters
    ----------
    q : float
        Target quantile, above ``tail_quantile``.
    tail_quantile : float
        Where the tail starts, as a quantile of the calibration scores.
    min_excesses : int
        Fewest tail scores to fit on; fewer raise :class:`~anomaly.errors.TailTooShortError`.
    confidence : float
        Coverage of ``interval_``.
    """

    def __init__(
        self,
        q: float = 0.99,
        tail_quantile: float = POT_TAIL_QUANTILE,
        min_excesses: int = POT_MIN_EXCESSES,
        confidence: float = 0.95,
    ):
        super().__init__(q)
        if not 0.0 < tail_quantile < q:
            raise ValueError(
                f"POT needs 0 < tail_quantile < q (the tail must start below the target), "
                f"got tail_quantile={tail_quantile} and q={q}"
            )
        if min_excesses < 3 or not 0.0 < confidence < 1.0:
            raise ValueError(
                f"need min_excesses >= 3 and confidence in (0, 1), got {min_excesses}, {confidence}"
            )
        self.tail_quantile = float(tail_quantile)
        self.min_excesses = int(min_excesses)
        self.confidence = float(confidence)

    def _tail(self, calibration_scores: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        scores = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
        if not np.isfinite(scores).all():
            raise CalibrationError(
                f"{int((~np.isfinite(scores)).sum())} calibration scores are not finite"
            )
        n = len(scores)
        k = math.floor(n * (1.0 - self.tail_quantile) + 1e-9)
        if k < self.min_excesses or k >= n:
            raise TailTooShortError(
                f"POT threshold: the tail above the {self.tail_quantile:g} quantile of {n} "
                f"calibration scores holds {k} scores, needs at least {self.min_excesses} "
                f"(at least {min_calibration_size(self.q, 'pot')} calibration scores with the "
                "defaults); give more normal data or use threshold='quantile'",
                n_excesses=k,
                needed=self.min_excesses,
            )
        u = float(scores[n - k - 1])
        return scores, u, scores[n - k :] - u

    def _log_p(self, zeta: float) -> float:
        # log of the tail probability the target leaves beyond u, relative to zeta: < 0.
        return math.log((1.0 - self.q) / zeta)

    def _level_factor(self, shape: np.ndarray, log_p: float) -> np.ndarray:
        # (p^-c - 1) / c, > 0 for every c since p < 1; its c -> 0 limit is -log p.
        c = np.asarray(shape, dtype=np.float64)
        safe = np.where(np.abs(c) < 1e-9, 1.0, c)
        return np.where(np.abs(c) < 1e-9, -log_p, np.expm1(-c * log_p) / safe)

    def _profile(self, level: float, excesses: np.ndarray, log_p: float) -> float:
        """Largest log-likelihood over GPD fits whose threshold is ``u + level``."""
        # A coarse grid then Brent's method around its best point: the profile can be flat or
        # have a second hump, which a local search from one start would miss.
        grid = np.linspace(-0.95, 2.0, 60)
        nll = _gpd_nll(grid, level / self._level_factor(grid, log_p), excesses)
        best = int(np.argmin(nll))
        if not np.isfinite(nll[best]):
            return -math.inf
        lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
        res = optimize.minimize_scalar(
            # Off the support the likelihood is 0; a huge finite value keeps Brent's steps finite.
            lambda c: min(
                float(
                    _gpd_nll(np.array(c), level / self._level_factor(np.array(c), log_p), excesses)
                ),
                1e300,
            ),
            bounds=(lo, hi),
            method="bounded",
        )
        return -float(min(res.fun, nll[best]))

    def fit(self, calibration_scores: np.ndarray) -> PotThreshold:
        """Fit the tail and set ``threshold_``, ``interval_`` and the GPD parameters.

        Raises
        ------
        TailTooShortError
            If fewer than ``min_excesses`` scores lie in the tail.
        CalibrationError
            If any score is not finite.
        """
        scores, u, excesses = self._tail(calibration_scores)
        zeta = len(excesses) / len(scores)
        log_p = self._log_p(zeta)
        if np.ptp(excesses) == 0:
            shape, scale = 0.0, 0.0  # a flat tail: nothing above u to fit
        else:
            shape, _, scale = stats.genpareto.fit(excesses, floc=0.0)
        level = float(scale * self._level_factor(np.array(shape), log_p)) if scale > 0 else 0.0
        interval = (u + level, u + level)
        if level > 0:
            best = max(
                -float(_gpd_nll(np.array(shape), np.array(scale), excesses)),
                self._profile(level, excesses, log_p),
            )
            cut = best - stats.chi2.ppf(self.confidence, 1) / 2.0

            def gap(x: float) -> float:
                # Floored: off the support the profile is -inf, which root finding cannot use.
                return max(self._profile(x, excesses, log_p) - cut, -1e12)

            lower = level * 1e-6
            low = optimize.brentq(gap, lower, level, xtol=level * 1e-6) if gap(lower) < 0 else 0.0
            high, upper = math.inf, level
            for _ in range(40):  # expand until the profile falls below the cut, or give up
                upper *= 1.5
                if gap(upper) < 0:
                    high = optimize.brentq(gap, level, upper, xtol=level * 1e-6)
                    break
            interval = (u + low, u + high)
        self._set(scores, u, len(excesses), float(shape), float(scale), u + level, interval)
        return self

    def _set(
        self,
        scores: np.ndarray,
        u: float,
        n_excesses: int,
        shape: float,
        scale: float,
        threshold: float,
        interval: tuple[float, float],
    ) -> None:
        self.calibration_scores_ = scores
        self.tail_start_ = u
        self.n_excesses_ = n_excesses
        self.shape_ = shape
        self.scale_ = scale
        self.threshold_ = threshold
        self.interval_ = interval

    def restore(self, calibration_scores: np.ndarray, config: dict[str, Any]) -> PotThreshold:
        """Set the fitted state from :meth:`to_dict`, checking the scores give the same tail."""
        scores, u, excesses = self._tail(calibration_scores)
        if u != config["tail_start"] or len(excesses) != config["n_excesses"]:
            raise CalibrationError(
                f"calibration scores give a tail from {u} with {len(excesses)} scores, the saved "
                f"threshold one from {config['tail_start']} with {config['n_excesses']}"
            )
        low, high = config["interval"]
        self._set(
            scores,
            u,
            len(excesses),
            float(config["shape"]),
            float(config["scale"]),
            float(config["threshold"]),
            (float(low), math.inf if high is None else float(high)),
        )
        return self

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """Conformal p-values up to the tail start ``u``, fitted-tail ones above it; in ``(0, 1]``."""
        p = super().p_values(scores)
        s = np.asarray(scores, dtype=np.float64)
        above = s > self.tail_start_
        if self.scale_ > 0 and above.any():
            zeta = self.n_excesses_ / len(self.calibration_scores_)
            tail = zeta * stats.genpareto.sf(
                s[above] - self.tail_start_, self.shape_, scale=self.scale_
            )
            p[above] = np.maximum(tail, np.finfo(np.float64).tiny)
        return p

    def to_dict(self) -> dict[str, Any]:
        self._check()
        low, high = self.interval_
        return super().to_dict() | {
            "kind": "pot",
            "tail_quantile": self.tail_quantile,
            "min_excesses": self.min_excesses,
            "confidence": self.confidence,
            "tail_start": self.tail_start_,
            "n_excesses": self.n_excesses_,
            "shape": self.shape_,
            "scale": self.scale_,
            # JSON has no infinity: an unbounded upper end is saved as null.
            "interval": [low, None if math.isinf(high) else high],
        }
