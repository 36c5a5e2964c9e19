"""Threshold calibration on held-out normal scores, and conformal p-values."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from anomaly.errors import CalibrationError, NotFittedError


def min_calibration_size(q: float) -> int:
    """Smallest calibration set for which the conformal ``q``-quantile exists: ``ceil(q / (1 - q))``."""
    return math.ceil(q / (1.0 - q) - 1e-9)


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
    if config.get("kind", "quantile") == "fixed":
        return FixedThreshold(config["threshold"])
    return QuantileThreshold(config["q"])
