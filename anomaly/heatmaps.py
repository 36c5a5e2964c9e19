"""Heat maps of flagged images, written as PNG beside a scoring run's output, a chunk at a time.

Each PNG shows the input image in grey with its error map over it, a colour bar with the
numeric scale, and the score against the threshold. Files are named by the image's key (the
file stem for an image folder, the key columns' values for Parquet input), so a reviewer finds
an image's map from its row; two images with the same name get ``-2``, ``-3`` ...

Colour scale: every map of every run of a model goes from 0 to :data:`HEATMAP_SCALE` times
the model's threshold, in pixel error. The threshold is in pixel-error units for every
reduction (a mean, a top-k mean or a maximum of the pixel errors), so a pixel at the threshold
sits at a quarter of the scale and a defect several times the threshold stands out; errors
above the top of the scale show its top colour (the bar's arrow). A scale taken from the
largest error of the run would need every map before the first could be drawn, and would
make colours mean different errors in different runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.data.images import PATH_COLUMN, write_png_atomic
from anomaly.data.paths import mark_output_folder
from anomaly.plots import HeatmapFigure
from anomaly.scoring import ScoredBatch

# The top of the colour scale as a multiple of the threshold (see the module docstring).
HEATMAP_SCALE = 4.0
# Long keys are cut: file systems refuse names over 255 bytes.
_MAX_STEM = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def heatmap_vmax(threshold: float) -> float:
    """The top of every heat map's colour scale for a model with this threshold."""
    return HEATMAP_SCALE * float(threshold)


def heatmap_stems(scored: pd.DataFrame, key_columns: Sequence[str]) -> list[str]:
    """A file-name stem per scored image: its file stem (folders), its keys' values joined by
    ``_`` (Parquet), or the source file's stem and row (Parquet without key columns)."""
    if list(key_columns) == [PATH_COLUMN]:
        raw = [Path(str(p)).stem for p in scored[PATH_COLUMN]]
    elif key_columns:
        values = scored[list(key_columns)].astype(str).to_numpy()
        raw = ["_".join(row) for row in values]
    else:
        raw = [
            f"{Path(str(f)).stem}_row{int(r)}"
            for f, r in zip(scored["source_file"], scored["source_row"], strict=True)
        ]
    return [_sanitize(name) for name in raw]


def _sanitize(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("._")[:_MAX_STEM] or "image"


class HeatmapWriter:
    """Writes the heat maps of each scored chunk's flagged images into ``directory``.

    Holds one figure and the names used so far (to make repeats unique), not the maps.
    """

    def __init__(self, directory: str | os.PathLike[str], threshold: float):
        self.directory = Path(directory)
        mark_output_folder(self.directory)
        self.threshold = float(threshold)
        self.figure = HeatmapFigure(heatmap_vmax(threshold))
        # Lower case: on a case-insensitive file system "A" and "a" are one file.
        self.used: set[str] = set()

    def _unique(self, stem: str) -> str:
        name, n = stem, 1
        while name.lower() in self.used:
            n += 1
            name = f"{stem}-{n}"
        self.used.add(name.lower())
        return name

    def write(self, batch: ScoredBatch, key_columns: Sequence[str]) -> pd.Series:
        """Write the flagged images' heat maps; return their paths aligned with ``batch.scored``
        (NA for images not flagged)."""
        paths = pd.Series(pd.NA, index=batch.scored.index, dtype="string")
        review = batch.images
        if review is None or not len(review.flagged_rows):
            return paths
        if review.flagged_images is None:
            raise ValueError("heat maps need the flagged images; score them with score_images")
        rows = review.flagged_rows
        flagged = batch.scored.iloc[rows]
        stems = heatmap_stems(flagged, key_columns)
        scores = flagged["anomaly_score"].to_numpy(dtype=np.float64)
        for i, row in enumerate(rows):
            title = f"score {scores[i]:.4g}, threshold {self.threshold:.4g}"
            rgb = self.figure.render(review.flagged_images[i], review.flagged_error_maps[i], title)
            path = self.directory / f"{self._unique(stems[i])}.png"
            paths.iloc[row] = str(write_png_atomic(rgb, path))
        return paths
