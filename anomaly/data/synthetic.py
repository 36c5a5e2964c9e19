"""Generated multi-sensor tables with planted anomalies, for the demo, tests and docs.

The sensors are driven by two hidden factors (machine load and ambient temperature) plus a
per-machine-type profile, so normal rows are correlated the way real plant telemetry is and an
anomaly can be subtle: a value that is ordinary on its own but inconsistent with the others.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = (
    "temperature",
    "pressure",
    "vibration",
    "rpm",
    "power",
    "flow_rate",
    "humidity",
    "voltage",
)
MACHINE_TYPES = ("pump", "compressor", "turbine")
ANOMALY_KINDS = ("spike", "correlation_break", "stuck_sensor", "overheating", "wrong_profile")
LABEL_COLUMN = "injected_anomaly"

# Per machine type: temperature offset, pressure offset, vibration multiplier, rpm multiplier.
_PROFILES = {
    "pump": (0.0, 0.0, 1.0, 1.0),
    "compressor": (12.0, 3.0, 1.6, 0.7),
    "turbine": (25.0, -1.0, 0.6, 1.8),
}


def _sensors(
    load: np.ndarray, ambient: np.ndarray, types: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    n = len(load)
    profile = np.array([_PROFILES[t] for t in types]).reshape(n, 4)
    t_off, p_off, v_mult, r_mult = profile.T
    pressure = 2.0 + 6.0 * load + p_off + rng.normal(0, 0.3, n)
    return {
        "temperature": 40.0 + 30.0 * load + 0.5 * ambient + t_off + rng.normal(0, 1.5, n),
        "pressure": pressure,
        "vibration": (0.5 + 2.0 * load**2) * v_mult + rng.normal(0, 0.15, n),
        "rpm": (1000.0 + 2500.0 * load) * r_mult + rng.normal(0, 60.0, n),
        "power": 5.0 + 5.0 * load * pressure + rng.normal(0, 1.5, n),
        "flow_rate": 10.0 + 50.0 * load + rng.normal(0, 2.0, n),
        "humidity": 60.0 - 1.2 * ambient + rng.normal(0, 3.0, n),
        "voltage": 400.0 - 3.0 * load + rng.normal(0, 2.0, n),
    }


def make_sensor_table(
    n_rows: int,
    anomaly_fraction: float = 0.0,
    seed: int = 0,
    start: str = "2026-01-01",
    first_id: int = 0,
) -> pd.DataFrame:
    """Generate a sensor table; a fraction of rows carries one of several planted anomalies.

    Parameters
    ----------
    n_rows : int
        Rows to generate, one per minute from ``start``.
    anomaly_fraction : float
        Share of rows with a planted anomaly, split evenly over ``ANOMALY_KINDS``.
    seed : int
        Seed of the generator; the same arguments give the same table.
    first_id : int
        First value of the ``reading_id`` key column.

    Returns
    -------
    pandas.DataFrame
        Columns ``reading_id``, ``timestamp``, ``machine_type``, the eight sensor features and
        ``injected_anomaly`` (``"none"`` or the anomaly kind).
    """
    rng = np.random.default_rng(seed)
    load = rng.beta(2.0, 2.0, n_rows)
    ambient = rng.normal(20.0, 5.0, n_rows)
    types = rng.choice(MACHINE_TYPES, size=n_rows, p=[0.5, 0.3, 0.2])
    values = _sensors(load, ambient, types, rng)
    labels = np.full(n_rows, "none", dtype=object)

    n_anomalies = round(anomaly_fraction * n_rows)
    rows = rng.choice(n_rows, size=n_anomalies, replace=False)
    for i, row in enumerate(rows):
        kind = ANOMALY_KINDS[i % len(ANOMALY_KINDS)]
        labels[row] = kind
        if kind == "spike":
            feature = FEATURES[rng.integers(len(FEATURES))]
            spread = values[feature].std()
            values[feature][row] += rng.choice([-1, 1]) * rng.uniform(6, 10) * spread
        elif kind == "correlation_break":
            # rpm of a machine at the opposite load: ordinary on its own, wrong with the rest.
            other = _sensors(1.0 - load[[row]], ambient[[row]], types[[row]], rng)
            values["rpm"][row] = other["rpm"][0]
            values["flow_rate"][row] = other["flow_rate"][0]
        elif kind == "stuck_sensor":
            values[FEATURES[rng.integers(len(FEATURES))]][row] = 0.0
        elif kind == "overheating":
            values["temperature"][row] += rng.uniform(15, 25)
            values["vibration"][row] += rng.uniform(1.0, 2.0)
        else:  # wrong_profile: the sensors of another machine type under this row's label
            others = [t for t in MACHINE_TYPES if t != types[row]]
            types[row] = others[rng.integers(len(others))]

    frame = pd.DataFrame(
        {
            "reading_id": np.arange(first_id, first_id + n_rows, dtype=np.int64),
            "timestamp": pd.date_range(start, periods=n_rows, freq="min"),
            "machine_type": pd.Series(types, dtype="string"),
        }
    )
    for name in FEATURES:
        frame[name] = values[name].astype(np.float64)
    frame[LABEL_COLUMN] = pd.Series(labels, dtype="string")
    return frame


SERIES_FEATURES = ("flow", "pressure", "temperature", "vibration")
SERIES_ANOMALY_KINDS = ("spike", "level_shift", "frequency_change", "decoupling")


def make_series_table(
    n_points: int = 2000,
    n_series: int = 1,
    anomalies: int = 0,
    anomaly_length: int = 30,
    seed: int = 0,
    start: str = "2024-01-01",
    frequency: str = "1s",
) -> pd.DataFrame:
    """Multivariate sensor series at a fixed frequency, optionally with planted anomalous spans.

    Four sensors follow a shared duty cycle (a slow sine plus a faster harmonic) with lags and
    noise, so a window shows both each sensor's shape and how the sensors move together. Planted
    spans of ``anomaly_length`` points are one of: a spike, a level shift, a change of frequency,
    or one sensor decoupling from the others. They are placed in the second half of each series,
    apart from each other; ``injected_anomaly`` names the kind ("" for normal points).

    Returns
    -------
    DataFrame with columns ``timestamp``, ``machine`` (series id), the sensors and
    ``injected_anomaly``; ``n_points * n_series`` rows.
    """
    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_series):
        t = np.arange(n_points, dtype=float)
        phase = rng.uniform(0, 2 * np.pi)
        period = 80 + 10 * s
        angle = 2 * np.pi * t / period + phase
        # The harmonic shares the phase shift (3 x), so every series has the same waveform shape.
        cycle = np.sin(angle) + 0.3 * np.sin(3 * angle)
        sensors = {
            "flow": 10 + 3 * cycle + rng.normal(0, 0.2, n_points),
            "pressure": 5 + 1.5 * np.roll(cycle, 3) + rng.normal(0, 0.1, n_points),
            "temperature": 60 + 4 * np.roll(cycle, 10) + rng.normal(0, 0.3, n_points),
            "vibration": 0.5 + 0.2 * np.abs(cycle) + rng.normal(0, 0.02, n_points),
        }
        labels = np.full(n_points, "", dtype=object)
        if anomalies:
            slots = np.linspace(n_points // 2, n_points - anomaly_length - 1, anomalies).astype(int)
            for i, begin in enumerate(slots):
                kind = SERIES_ANOMALY_KINDS[i % len(SERIES_ANOMALY_KINDS)]
                span = slice(begin, begin + anomaly_length)
                if kind == "spike":
                    sensors["pressure"][span] += 2.5 * np.hanning(anomaly_length)
                elif kind == "level_shift":
                    sensors["temperature"][span] += 8.0
                elif kind == "frequency_change":
                    fast = np.sin(4 * angle[span])
                    sensors["flow"][span] = 10 + 3 * fast + rng.normal(0, 0.2, anomaly_length)
                else:
                    sensors["vibration"][span] = 0.5 + 0.2 * rng.uniform(0, 1, anomaly_length)
                labels[span] = kind
        frame = pd.DataFrame(
            {
                "timestamp": pd.date_range(start, periods=n_points, freq=frequency),
                "machine": f"m{s}",
                **sensors,
                LABEL_COLUMN: labels,
            }
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def make_blob_images(
    n: int,
    size: tuple[int, int] = (16, 16),
    channels: int = 1,
    seed: int = 0,
    defect: bool = False,
) -> np.ndarray:
    """Smooth images ``(n, channels, H, W)`` in [0, 1]: one soft blob at a random place on a dark background.

    With ``defect``, a bright square of a quarter of the short side is stamped in the bottom-right
    corner (where blobs never are), the kind of small local fault a per-pixel error map should find.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy = rng.uniform(0.2, 0.5, n)[:, None, None] * height
    cx = rng.uniform(0.2, 0.5, n)[:, None, None] * width
    radius = rng.uniform(0.12, 0.2, n)[:, None, None] * min(height, width)
    blob = 0.8 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    images = np.repeat(blob[:, None], channels, axis=1)
    if channels > 1:  # a per-image tint, so the channels differ
        images = images * rng.uniform(0.6, 1.0, (n, channels, 1, 1))
    images = images + rng.normal(0, 0.02, images.shape)
    if defect:
        side = max(2, min(height, width) // 4)
        images[:, :, height - side - 1 : height - 1, width - side - 1 : width - 1] = 1.0
    return np.clip(images, 0, 1).astype(np.float32)


def defect_mask(size: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the square :func:`make_blob_images` plants with ``defect=True``."""
    height, width = size
    side = max(2, min(height, width) // 4)
    mask = np.zeros(size, dtype=bool)
    mask[height - side - 1 : height - 1, width - side - 1 : width - 1] = True
    return mask
