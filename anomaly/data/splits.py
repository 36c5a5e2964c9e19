"""Setting normal data apart for the promotion gate: rows the model never sees."""

from __future__ import annotations

import numpy as np
import pandas as pd

from anomaly.data.images import ImageBatch


def split_holdout(
    frame: pd.DataFrame | ImageBatch, fraction: float, seed: int = 0, contiguous: bool = False
) -> tuple[pd.DataFrame | ImageBatch, pd.DataFrame | ImageBatch]:
    """Split normal rows into (rows to fit on, hold-out rows the model never sees).

    Rows are drawn at random; for time series (``contiguous``) the last ``fraction`` of the
    rows is held out instead, so both parts stay unbroken series.
    """
    if isinstance(frame, ImageBatch):  # images: a random share of the decoded images
        order = np.random.default_rng(seed).permutation(len(frame.images))
        n_holdout = round(len(order) * max(fraction, 0.0))
        return (
            frame.subset(np.sort(order[n_holdout:]), keep_rejected=True),
            frame.subset(np.sort(order[:n_holdout])),
        )
    if fraction <= 0:
        return frame, frame.iloc[:0]
    if contiguous:
        cut = len(frame) - round(len(frame) * fraction)
        return frame.iloc[:cut], frame.iloc[cut:]
    holdout = frame.sample(frac=fraction, random_state=seed)
    return frame.drop(index=holdout.index), holdout
