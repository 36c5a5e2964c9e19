"""Duplicate keys within a file: which earlier row, if any, has the same key values."""

from __future__ import annotations

import numpy as np
import pandas as pd


def key_hashes(keys: pd.DataFrame) -> np.ndarray:
    """64-bit hash of each row's key values ``(n,)`` (pandas' own row hash, stable across runs)."""
    return pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)


class KeyIndex:
    """Remembers the first row of every key seen in one file, fed in order, batch by batch.

    Keys are kept as 64-bit hashes with their first row: 16 bytes per distinct key whatever the
    key columns hold. The hashes sit in a few sorted arrays whose sizes at least double from the
    newest to the oldest, merged as they fill (as a log-structured merge tree does), so a file of
    n rows costs O(n log n) in all and each lookup O(log² n). Two different keys share a hash
    with probability about n² / 2⁶⁵ (3e-6 for ten million rows).
    """

    def __init__(self) -> None:
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted hashes, first rows)

    def earlier_rows(self, keys: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
        """For each row of ``keys`` (at file positions ``rows``), the position of an earlier row
        with the same key values, or -1 where the key is new; ``(n,)`` int64.

        The earlier row is the first one seen with that key, in this batch or before it.
        """
        if not len(keys):
            return np.zeros(0, dtype=np.int64)
        hashes = key_hashes(keys)
        rows = np.asarray(rows, dtype=np.int64)
        unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        first_row = rows[first]
        seen = np.full(len(unique), -1, dtype=np.int64)
        for level_hashes, level_rows in self._levels:
            at = np.searchsorted(level_hashes, unique)
            at_clipped = np.minimum(at, len(level_hashes) - 1)
            found = (at < len(level_hashes)) & (level_hashes[at_clipped] == unique)
            seen[found] = level_rows[at_clipped[found]]
        new = seen < 0
        earliest = np.where(new, first_row, seen)
        out = earliest[inverse]
        # The first occurrence of a new key is not a duplicate of itself.
        out[first[new]] = -1
        if new.any():
            self._add(unique[new], first_row[new])
        return out

    def _add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        self._levels.append((hashes, rows))
        while len(self._levels) > 1 and len(self._levels[-2][0]) <= 2 * len(self._levels[-1][0]):
            (h1, r1), (h2, r2) = self._levels.pop(), self._levels.pop()
            merged = np.concatenate([h2, h1])
            order = np.argsort(merged, kind="stable")
            self._levels.append((merged[order], np.concatenate([r2, r1])[order]))
