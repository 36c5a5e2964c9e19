"""Duplicate keys within a file: which earlier row, if any, has the same key values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anomaly.data.key_index import (
    DEFAULT_BLOOM_BITS,
    DEFAULT_MEMORY_KEYS,
    MERGE_CHUNK,
    HashIndex,
)


def key_hashes(keys: pd.DataFrame) -> np.ndarray:
    """64-bit hash of each row's key values ``(n,)`` (pandas' own row hash, stable across runs)."""
    return pd.util.hash_pandas_object(keys, index=False).to_numpy(dtype=np.uint64)


class KeyIndex:
    """Remembers the first row of every key seen in one file, fed in order, batch by batch.

    Keys are kept as 64-bit hashes with their first row in a :class:`~anomaly.data.key_index.HashIndex`:
    16 bytes per distinct key in memory up to ``memory_keys`` keys (16 MiB by default), then
    sorted runs on disk behind a fixed 16 MiB Bloom filter, so memory stays flat however many
    keys a file holds. Lookups are exact over the hashes. Two different keys share a hash with
    probability about n² / 2⁶⁵ (3e-6 for ten million rows).
    """

    def __init__(
        self,
        memory_keys: int = DEFAULT_MEMORY_KEYS,
        bloom_bits: int = DEFAULT_BLOOM_BITS,
        directory: str | Path | None = None,
        merge_chunk: int = MERGE_CHUNK,
    ) -> None:
        self._index = HashIndex(memory_keys, bloom_bits, directory, merge_chunk)

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
        seen = self._index.lookup(unique)
        new = seen < 0
        earliest = np.where(new, first_row, seen)
        out = earliest[inverse]
        # The first occurrence of a new key is not a duplicate of itself.
        out[first[new]] = -1
        if new.any():
            self._index.add(unique[new], first_row[new])
        return out

    def close(self) -> None:
        """Forget every key and remove any runs written to disk."""
        self._index.close()
