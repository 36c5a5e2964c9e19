"""A set of 64-bit key hashes, each with the first row it was seen at, in bounded memory.

Duplicate-key detection in a file must remember every distinct key it has passed. Held in memory
that costs 16 bytes a key, without bound (1.6 GB for 100 M rows). :class:`HashIndex` keeps at
most ``memory_keys`` keys in memory; beyond that it writes them to disk as a sorted run (hashes
and rows as raw little-endian files, searched memory-mapped) and sets them in a fixed-size Bloom filter.
A lookup searches the in-memory keys, and the runs only for hashes the filter may have seen, so
distinct keys (the usual case) rarely touch the disk. Every hit is confirmed by an exact binary
search, so answers are exactly those of an unbounded in-memory index.

Runs of similar size are merged on disk in chunks (a log-structured merge tree), so there are
O(log(n / memory_keys)) of them and merging never holds more than a chunk in memory. Merges read
and write with plain file I/O, not through memory maps: every page a map touches counts in the
process's resident memory until it is unmapped, so merging two 8 M-key runs through maps added
about 300 MiB to a scoring run's peak RSS. Lookups stay memory-mapped; the Bloom filter keeps
them to a few pages.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

# 16 MiB of filter bits: a false-positive rate of about 1e-3 after 4 M spilled keys and 0.04
# after 16 M; past that it lets more lookups through to the runs, which stay exact.
DEFAULT_BLOOM_BITS = 1 << 27
# 1 Mi keys (16 MiB of hashes and rows) in memory before the first spill: a file of that many
# distinct keys never touches the disk. Merging levels in memory briefly needs about 3x that.
DEFAULT_MEMORY_KEYS = 1 << 20
# Elements per side of one step of an on-disk merge (about 20 MiB in flight at 2 x 256 Ki).
MERGE_CHUNK = 1 << 18
_PROBES = 3
_ADD_SLICE = 1 << 16


_HASH, _ROW = np.dtype("<u8"), np.dtype("<i8")


def _read(path: Path, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
    """Elements ``start:stop`` of a raw run file, read (not mapped) into memory."""
    return np.fromfile(path, dtype=dtype, count=stop - start, offset=start * dtype.itemsize)


def _search(hashes: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Row of each of ``queries`` (sorted) in the sorted ``hashes``, or -1 where absent."""
    out = np.full(len(queries), -1, dtype=np.int64)
    if not len(hashes) or not len(queries):
        return out
    at = np.searchsorted(hashes, queries)
    inside = at < len(hashes)
    at_in = at[inside]
    found = np.zeros(len(queries), dtype=bool)
    found[inside] = np.asarray(hashes[at_in]) == queries[inside]
    out[found] = np.asarray(rows[at[found]])
    return out


class BloomFilter:
    """A fixed-size blocked Bloom filter over 64-bit hashes (already well mixed).

    Each hash sets ``3`` bits of one 64-bit word (Putze, Sanders and Singler's blocked filter):
    the word from the hash's top bits, the bit positions from its low bits. One word per hash
    makes a lookup one gather, and since the word index grows with the hash, the sorted hashes
    of a spilled run set their words in one pass (no per-bit scatter, which took a quarter of
    the time of an 8 M-key file). Its false-positive rate is a little above a classic filter's
    of the same size: about 1e-3 after 4 M keys in 16 MiB.

    Parameters
    ----------
    n_bits : int
        Size of the filter, a power of two; memory is ``n_bits / 8`` bytes whatever is added.
    """

    def __init__(self, n_bits: int = DEFAULT_BLOOM_BITS):
        if n_bits < 128 or n_bits & (n_bits - 1):
            raise ValueError(f"n_bits must be a power of two of at least 128, got {n_bits}")
        self.n_bits = n_bits
        self._words = np.zeros(n_bits // 64, dtype=np.uint64)
        self._shift = np.uint64(64 - (n_bits // 64).bit_length() + 1)

    def _slots(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.asarray(hashes, dtype=np.uint64)
        word = h >> self._shift
        one = np.uint64(1)
        mask = np.zeros(len(h), dtype=np.uint64)
        for i in range(_PROBES):
            mask |= one << ((h >> np.uint64(6 * i)) & np.uint64(63))
        return word, mask

    def add(self, hashes: np.ndarray) -> None:
        """Set ``hashes`` ``(n,)`` uint64 in the filter (fastest when sorted, as runs are)."""
        # In slices, so the temporaries stay small whatever the run's size.
        for start in range(0, len(hashes), _ADD_SLICE):
            word, mask = self._slots(hashes[start : start + _ADD_SLICE])
            if len(word) > 1 and bool((word[1:] < word[:-1]).any()):
                order = np.argsort(word, kind="stable")
                word, mask = word[order], mask[order]
            # Hashes that share a word: their masks OR-ed together, then one write per word.
            firsts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
            self._words[word[firsts]] |= np.bitwise_or.reduceat(mask, firsts)

    def may_contain(self, hashes: np.ndarray) -> np.ndarray:
        """False where a hash was certainly never added, True where it may have been; ``(n,)`` bool."""
        if not len(hashes):
            return np.zeros(0, dtype=bool)
        word, mask = self._slots(hashes)
        return (self._words[word] & mask) == mask

    @property
    def nbytes(self) -> int:
        return int(self._words.nbytes)


class HashIndex:
    """Distinct uint64 hashes with the first row of each, in memory up to a cap, then on disk.

    Parameters
    ----------
    memory_keys : int
        Keys kept in memory before they are written to disk as a sorted run.
    bloom_bits : int
        Size of the Bloom filter in front of the runs (a power of two).
    directory : path or None
        Where runs are written (a fresh folder under it, removed when the index is closed or
        garbage-collected); None: the system temporary folder. Nothing is written until the
        first spill.
    merge_chunk : int
        Elements read from each run per step of an on-disk merge: what bounds its memory.
    """

    def __init__(
        self,
        memory_keys: int = DEFAULT_MEMORY_KEYS,
        bloom_bits: int = DEFAULT_BLOOM_BITS,
        directory: str | Path | None = None,
        merge_chunk: int = MERGE_CHUNK,
    ):
        if memory_keys < 1:
            raise ValueError(f"memory_keys must be positive, got {memory_keys}")
        self.memory_keys = memory_keys
        self.merge_chunk = merge_chunk
        self._bloom_bits = bloom_bits
        self._bloom: BloomFilter | None = None  # allocated at the first spill
        self._parent = directory
        self._dir: Path | None = None
        self._finalizer: weakref.finalize | None = None
        # In memory: sorted levels whose sizes at least double from newest to oldest.
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []
        self._in_memory = 0
        # On disk: (sorted hashes, rows) memory-mapped for lookups; each map knows its file.
        self._runs: list[tuple[np.memmap, np.memmap]] = []
        self._files = 0
        self.n_keys = 0

    @property
    def n_runs(self) -> int:
        """Sorted runs on disk now."""
        return len(self._runs)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """First row of each of ``hashes`` (sorted, distinct) already added, or -1; ``(n,)`` int64."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        seen = np.full(len(hashes), -1, dtype=np.int64)
        for level_hashes, level_rows in self._levels:
            found = _search(level_hashes, level_rows, hashes)
            seen = np.where(found >= 0, found, seen)
        if self._runs and self._bloom is not None:
            # Only hashes not found in memory and possibly in a run need a disk search.
            candidates = np.flatnonzero(seen < 0)
            candidates = candidates[self._bloom.may_contain(hashes[candidates])]
            for run_hashes, run_rows in self._runs:
                if not len(candidates):
                    break
                found = _search(run_hashes, run_rows, hashes[candidates])
                hit = found >= 0
                seen[candidates[hit]] = found[hit]
                candidates = candidates[~hit]
        return seen

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Add ``hashes`` (distinct, none added before) with their first ``rows``."""
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        self._levels.append(
            (np.asarray(hashes, dtype=np.uint64)[order], np.asarray(rows, dtype=np.int64)[order])
        )
        self._in_memory += len(hashes)
        self.n_keys += len(hashes)
        while len(self._levels) > 1 and len(self._levels[-2][0]) <= 2 * len(self._levels[-1][0]):
            (h1, r1), (h2, r2) = self._levels.pop(), self._levels.pop()
            merged = np.concatenate([h2, h1])
            at = np.argsort(merged, kind="stable")
            self._levels.append((merged[at], np.concatenate([r2, r1])[at]))
        if self._in_memory > self.memory_keys:
            self._spill()

    def close(self) -> None:
        """Remove the runs from disk; the index is empty afterwards."""
        self._runs.clear()
        self._levels.clear()
        self._in_memory = self.n_keys = 0
        self._bloom = None
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._dir = None

    # ------------------------------------------------------------------ disk runs
    def _directory(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="anomaly-keys-", dir=self._parent))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
        return self._dir

    def _new_files(self) -> tuple[Path, Path]:
        self._files += 1
        base = self._directory() / f"run{self._files:05d}"
        return base.with_suffix(".hashes"), base.with_suffix(".rows")

    def _open(self, hashes_path: Path, rows_path: Path, n: int) -> None:
        self._runs.append(
            (
                np.memmap(hashes_path, dtype=_HASH, mode="r", shape=(n,)),
                np.memmap(rows_path, dtype=_ROW, mode="r", shape=(n,)),
            )
        )

    def _spill(self) -> None:
        # Each level is already sorted: written as its own run (oldest, largest first, which keeps
        # the runs' sizes decreasing), so no in-memory merge of everything is needed to spill.
        if self._bloom is None:
            self._bloom = BloomFilter(self._bloom_bits)
        levels, self._levels, self._in_memory = self._levels, [], 0
        while levels:
            hashes, rows = levels.pop(0)
            self._bloom.add(hashes)
            hashes_path, rows_path = self._new_files()
            hashes.astype(_HASH, copy=False).tofile(hashes_path)
            rows.astype(_ROW, copy=False).tofile(rows_path)
            self._open(hashes_path, rows_path, len(hashes))
            del hashes, rows
            while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
                self._merge_last_two()

    def _merge_last_two(self) -> None:
        """Merge the two newest runs (disjoint hashes) into one, a chunk at a time."""
        na, nb = len(self._runs[-2][0]), len(self._runs[-1][0])
        (ah, ar), (bh, br) = [tuple(Path(str(m.filename)) for m in run) for run in self._runs[-2:]]
        # The maps go before the merge reads: nothing of the old runs stays resident.
        del self._runs[-2:]
        hashes_path, rows_path = self._new_files()
        i = j = 0
        chunk = self.merge_chunk
        with open(hashes_path, "wb") as out_h, open(rows_path, "wb") as out_r:
            while i < na or j < nb:
                a = _read(ah, _HASH, i, min(i + chunk, na))
                b = _read(bh, _HASH, j, min(j + chunk, nb))
                # Everything up to the smaller of the two chunk ends can be written now: no
                # later element of either run sorts below it.
                pivot = min(x[-1] for x in (a, b) if len(x))
                ia = i + int(np.searchsorted(a, pivot, "right"))
                jb = j + int(np.searchsorted(b, pivot, "right"))
                hashes = np.concatenate([a[: ia - i], b[: jb - j]])
                rows = np.concatenate([_read(ar, _ROW, i, ia), _read(br, _ROW, j, jb)])
                at = np.argsort(hashes, kind="stable")
                hashes[at].tofile(out_h)
                rows[at].tofile(out_r)
                i, j = ia, jb
        for old in (ah, ar, bh, br):
            old.unlink(missing_ok=True)
        self._open(hashes_path, rows_path, na + nb)
