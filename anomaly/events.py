"""Anomaly events of series: runs of flagged points grouped into one record each, across batches.

An event is a stretch of one series from a flagged point to a flagged point, in which no more
than ``merge_gap`` unflagged points lie between two flagged ones, and that spans at least
``min_duration`` points. It records where it starts and ends, how many points it spans and how
many were flagged, its peak score (and where), its smallest p-value, and the ``n_top`` features
with the largest share of the flagged points' reconstruction error.

:class:`EventTracker` carries an event that is still open at the end of a batch (its last
flagged point is within ``merge_gap`` of the batch end) into the next batch, through a JSON
state that is saved with the series context, so an event spanning two batches is one event:
listed as open (``open=True``) by the first run and as closed, with its whole extent, by the
run that closes it. ``event_id`` (series and start) is the same in both. A run's count of
events (:attr:`EventTracker.n_closed`) counts closed events only, so summing it over runs
counts every event once.

All functions are pure: arrays in, a DataFrame out; nothing here reads or writes files.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

STATE_VERSION = 1


@dataclass(frozen=True)
class EventSettings:
    """How flagged points become events.

    Attributes
    ----------
    min_duration : int
        Fewest points (first to last flagged point, inclusive) an event spans; shorter runs are
        dropped as blips. 1 keeps single flagged points.
    merge_gap : int
        Most unflagged points between two flagged ones of the same event; 0 splits at every
        unflagged point.
    n_top : int
        Features named per event, by share of the flagged points' error.
    """

    min_duration: int = 1
    merge_gap: int = 0
    n_top: int = 3

    def __post_init__(self) -> None:
        if self.min_duration < 1 or self.merge_gap < 0 or self.n_top < 1:
            raise ValueError(
                "need min_duration >= 1, merge_gap >= 0 and n_top >= 1, got "
                f"{self.min_duration}, {self.merge_gap}, {self.n_top}"
            )


def event_columns(n_top: int = 3) -> list[str]:
    """Columns of an events table, in order."""
    top = [c for i in range(1, n_top + 1) for c in (f"feature_{i}", f"share_{i}")]
    return [
        "series",
        "event_id",
        "start",
        "end",
        "n_points",
        "n_flagged",
        "peak_score",
        "peak_at",
        "min_p_value",
        *top,
        "open",
    ]


@dataclass
class _Open:
    """An event being built: its extent, aggregates and per-feature error sums."""

    start: Any
    end: Any
    end_position: int  # position in the series (points seen before this batch + index)
    start_position: int
    n_flagged: int
    peak_score: float
    peak_at: Any
    min_p_value: float
    errors: np.ndarray  # (n_features,) summed over flagged points

    def absorb(self, other: _Open) -> None:
        self.end, self.end_position = other.end, other.end_position
        self.n_flagged += other.n_flagged
        if other.peak_score > self.peak_score:
            self.peak_score, self.peak_at = other.peak_score, other.peak_at
        self.min_p_value = min(self.min_p_value, other.min_p_value)
        self.errors = self.errors + other.errors


def _to_json_time(value: Any) -> Any:
    if isinstance(value, pd.Timestamp | np.datetime64):
        return {"timestamp": pd.Timestamp(value).isoformat()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _from_json_time(value: Any) -> Any:
    if isinstance(value, dict) and "timestamp" in value:
        return pd.Timestamp(value["timestamp"])
    return value


class EventTracker:
    """Groups flagged points of many series into events, batch after batch.

    Parameters
    ----------
    feature_names : sequence of str
        Names of the columns of the per-feature error arrays given to :meth:`update`.
    settings : EventSettings, optional
    state : str, optional
        JSON from :meth:`to_json` of the tracker after the previous batch; its settings and
        feature names must match.
    """

    def __init__(
        self,
        feature_names: list[str] | tuple[str, ...],
        settings: EventSettings | None = None,
        state: str | None = None,
    ):
        self.feature_names = tuple(feature_names)
        self.settings = settings or EventSettings()
        self._open: dict[str, _Open] = {}
        self._seen: dict[str, int] = {}  # points of each series seen so far (positions)
        self._trailing: dict[str, int] = {}  # unflagged points after an open event's end
        self.n_closed = 0
        self.n_open = 0
        if state is not None:
            self._load(state)

    # ------------------------------------------------------------------ state
    def to_json(self) -> str:
        """The open events and positions, as JSON to keep with the series context."""
        return json.dumps(
            {
                "version": STATE_VERSION,
                "settings": asdict(self.settings),
                "feature_names": list(self.feature_names),
                "seen": self._seen,
                "open": {
                    key: {
                        "start": _to_json_time(ev.start),
                        "end": _to_json_time(ev.end),
                        "start_position": ev.start_position,
                        "end_position": ev.end_position,
                        "n_flagged": ev.n_flagged,
                        "peak_score": ev.peak_score,
                        "peak_at": _to_json_time(ev.peak_at),
                        "min_p_value": ev.min_p_value,
                        "errors": ev.errors.tolist(),
                        "trailing": self._trailing[key],
                    }
                    for key, ev in self._open.items()
                },
            }
        )

    def _load(self, text: str) -> None:
        state = json.loads(text)
        if state.get("version") != STATE_VERSION:
            raise ValueError(
                f"event state version {state.get('version')}, expected {STATE_VERSION}"
            )
        if tuple(state["feature_names"]) != self.feature_names:
            raise ValueError(
                f"event state is for features {state['feature_names']}, "
                f"not {list(self.feature_names)}"
            )
        self._seen = {str(k): int(v) for k, v in state["seen"].items()}
        for key, ev in state["open"].items():
            self._open[key] = _Open(
                start=_from_json_time(ev["start"]),
                end=_from_json_time(ev["end"]),
                start_position=int(ev["start_position"]),
                end_position=int(ev["end_position"]),
                n_flagged=int(ev["n_flagged"]),
                peak_score=float(ev["peak_score"]),
                peak_at=_from_json_time(ev["peak_at"]),
                min_p_value=float(ev["min_p_value"]),
                errors=np.asarray(ev["errors"], dtype=np.float64),
            )
            self._trailing[key] = int(ev["trailing"])

    # ------------------------------------------------------------------ grouping
    def update(
        self,
        series: np.ndarray | None,
        times: np.ndarray | None,
        scores: np.ndarray,
        p_values: np.ndarray,
        flagged: np.ndarray,
        feature_errors: np.ndarray,
    ) -> pd.DataFrame:
        """Events of one batch: those closed in it and those still open at its end.

        Points are taken per series in time order (stable, so equal times keep their order).

        Parameters
        ----------
        series : array (n,) or None
            Series id of each point; None: one series.
        times : array (n,) or None
            Time of each point; None: points are in order, and an event's ``start`` and ``end``
            are positions in the series counted over all batches.
        scores, p_values : arrays (n,)
        flagged : bool array (n,)
        feature_errors : array (n, n_features)
            Per-feature error of each point (its share of the score).

        Returns
        -------
        DataFrame with :func:`event_columns`; ``n_closed`` and ``n_open`` count its two kinds.
        """
        n = len(scores)
        keys = np.full(n, "", dtype=object) if series is None else np.asarray(series).astype(str)
        rows: list[dict[str, Any]] = []
        for key in pd.unique(keys):
            idx = np.flatnonzero(keys == key)
            if times is not None:
                idx = idx[np.argsort(np.asarray(times)[idx], kind="stable")]
            at = None if times is None else np.asarray(times)[idx]
            rows += self._series(
                str(key),
                at,
                np.asarray(scores, dtype=np.float64)[idx],
                np.asarray(p_values, dtype=np.float64)[idx],
                np.asarray(flagged, dtype=bool)[idx],
                np.asarray(feature_errors, dtype=np.float64)[idx],
                series is None,
            )
        self.n_closed = sum(not r["open"] for r in rows)
        self.n_open = len(rows) - self.n_closed
        return self._frame(rows, times)

    def _series(
        self,
        key: str,
        times: np.ndarray | None,
        scores: np.ndarray,
        p_values: np.ndarray,
        flagged: np.ndarray,
        errors: np.ndarray,
        single: bool,
    ) -> list[dict[str, Any]]:
        gap = self.settings.merge_gap
        first = self._seen.get(key, 0)
        n = len(scores)
        self._seen[key] = first + n
        hits = np.flatnonzero(flagged)
        # Runs of flagged points no more than merge_gap unflagged points apart.
        breaks = np.flatnonzero(np.diff(hits) - 1 > gap) + 1
        groups = np.split(hits, breaks) if len(hits) else []
        out: list[dict[str, Any]] = []
        current = self._open.pop(key, None)
        trailing = self._trailing.pop(key, 0)
        for group in groups:

            def when(i: int) -> Any:
                if times is None:
                    return first + int(i)
                # Timestamps, not datetime64: they survive the JSON state with the same ids.
                return pd.Timestamp(times[i]) if times.dtype.kind == "M" else times[i]

            peak = group[int(np.argmax(scores[group]))]
            event = _Open(
                start=when(group[0]),
                end=when(group[-1]),
                start_position=first + int(group[0]),
                end_position=first + int(group[-1]),
                n_flagged=len(group),
                peak_score=float(scores[peak]),
                peak_at=when(peak),
                min_p_value=float(p_values[group].min()),
                errors=errors[group].sum(axis=0),
            )
            if current is not None and trailing + int(group[0]) <= gap:
                current.absorb(event)  # continues the event left open by the last batch
            else:
                if current is not None:
                    out += self._emit(key, current, single, is_open=False)
                current = event
            trailing = 0
        if current is None:
            return out
        # Unflagged points after the event's last flagged point, up to the end of this batch.
        trailing = (trailing + n) if not len(hits) else n - 1 - (current.end_position - first)
        if trailing > gap:
            return out + self._emit(key, current, single, is_open=False)
        self._open[key], self._trailing[key] = current, trailing
        return out + self._emit(key, current, single, is_open=True)

    def open_events(self, keys: list[str], single: bool, times: np.ndarray | None) -> pd.DataFrame:
        """The events of these series still open, as :meth:`update` lists them at a batch's end.

        A run fed to :meth:`update` in several pieces lists the closed events of every piece
        and, at its end, these: together the events one :meth:`update` of the whole run gives.
        ``times`` is any array of the run's time type (its dtype types the columns), or None.
        """
        rows: list[dict[str, Any]] = []
        for key in keys:
            if key in self._open:
                rows += self._emit(key, self._open[key], single, is_open=True)
        return self._frame(rows, times)

    def _emit(self, key: str, ev: _Open, single: bool, is_open: bool) -> list[dict[str, Any]]:
        span = ev.end_position - ev.start_position + 1
        if span < self.settings.min_duration:
            return []  # an open one may still grow to min_duration; it stays in the state
        total = ev.errors.sum()
        share = ev.errors / total if total > 0 else np.zeros_like(ev.errors)
        order = np.argsort(-share, kind="stable")[: self.settings.n_top]
        top: dict[str, Any] = {}
        for i in range(self.settings.n_top):
            named = i < len(order)
            top[f"feature_{i + 1}"] = self.feature_names[order[i]] if named else None
            top[f"share_{i + 1}"] = float(share[order[i]]) if named else np.nan
        start = ev.start.isoformat() if isinstance(ev.start, pd.Timestamp) else ev.start
        return [
            {
                "series": None if single else key,
                "event_id": f"{key}@{start}",
                "start": ev.start,
                "end": ev.end,
                "n_points": span,
                "n_flagged": ev.n_flagged,
                "peak_score": ev.peak_score,
                "peak_at": ev.peak_at,
                "min_p_value": ev.min_p_value,
                **top,
                "open": is_open,
            }
        ]

    def _frame(self, rows: list[dict[str, Any]], times: np.ndarray | None) -> pd.DataFrame:
        columns = event_columns(self.settings.n_top)
        frame = pd.DataFrame(rows, columns=columns)
        time_dtype = np.dtype(np.int64) if times is None else np.asarray(times).dtype
        for column in ("start", "end", "peak_at"):
            frame[column] = (
                frame[column].astype(time_dtype) if len(frame) else pd.Series([], dtype=time_dtype)
            )
        for column in ("series", "event_id", *columns[9:-1:2]):
            frame[column] = frame[column].astype("string")
        return frame.astype(
            {
                "n_points": np.int64,
                "n_flagged": np.int64,
                "peak_score": np.float64,
                "min_p_value": np.float64,
                "open": bool,
                **{f"share_{i}": np.float64 for i in range(1, self.settings.n_top + 1)},
            }
        )


def find_events(
    series: np.ndarray | None,
    times: np.ndarray | None,
    scores: np.ndarray,
    p_values: np.ndarray,
    flagged: np.ndarray,
    feature_errors: np.ndarray,
    feature_names: list[str] | tuple[str, ...],
    settings: EventSettings | None = None,
) -> pd.DataFrame:
    """Events of one table on its own (no earlier batch); see :meth:`EventTracker.update`."""
    tracker = EventTracker(feature_names, settings)
    return tracker.update(series, times, scores, p_values, flagged, feature_errors)


def scored_events(
    scored: pd.DataFrame,
    feature_errors: np.ndarray,
    feature_names: list[str] | tuple[str, ...],
    time_column: str | None,
    series_column: str | None,
    settings: EventSettings | None = None,
    state: str | None = None,
) -> tuple[pd.DataFrame, EventTracker]:
    """Events of a scored series table (``anomaly_score``, ``p_value``, ``is_anomaly``, keys).

    ``feature_errors`` is aligned with ``scored``'s rows. Rows that repeat an earlier row's
    point (``duplicate_of_row`` set) are left out, so a merged duplicate counts once. ``state``
    is the tracker's JSON after the previous batch. Returns the events and the tracker, whose
    :meth:`~EventTracker.to_json` is the state to keep for the next batch.
    """
    keep = np.ones(len(scored), dtype=bool)
    if "duplicate_of_row" in scored.columns:
        keep = scored["duplicate_of_row"].isna().to_numpy()
    rows = scored.loc[keep]
    tracker = EventTracker(feature_names, settings, state)
    events = tracker.update(
        None if series_column is None else rows[series_column].to_numpy(),
        None if time_column is None else rows[time_column].to_numpy(),
        rows["anomaly_score"].to_numpy(dtype=np.float64),
        rows["p_value"].to_numpy(dtype=np.float64),
        rows["is_anomaly"].to_numpy(dtype=bool),
        np.asarray(feature_errors, dtype=np.float64)[keep],
    )
    return events, tracker
