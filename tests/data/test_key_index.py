"""The bounded duplicate-key index: exact answers across spills to disk, memory that stays flat."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anomaly.data.key_index import BloomFilter, HashIndex
from anomaly.data.keys import KeyIndex, key_hashes


def _reference(hashes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Earlier row of each key in one pass over a dict: what any correct index must return."""
    first: dict[int, int] = {}
    out = np.full(len(hashes), -1, dtype=np.int64)
    for i, (h, r) in enumerate(zip(hashes.tolist(), rows.tolist(), strict=True)):
        if h in first:
            out[i] = first[h]
        else:
            first[h] = r
    return out


def _feed(index: KeyIndex, keys: pd.DataFrame, batch: int) -> np.ndarray:
    rows = np.arange(len(keys), dtype=np.int64)
    parts = [
        index.earlier_rows(keys.iloc[s : s + batch], rows[s : s + batch])
        for s in range(0, len(keys), batch)
    ]
    return np.concatenate(parts)


def test_duplicates_across_spills_match_an_unbounded_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # 20 k rows drawn from 8 k ids: most keys repeat, often many spills after their first row.
    keys = pd.DataFrame({"id": rng.integers(0, 8_000, 20_000), "site": rng.integers(0, 2, 20_000)})
    bounded = KeyIndex(memory_keys=500, bloom_bits=1 << 12, directory=tmp_path)
    got = _feed(bounded, keys, batch=700)
    unbounded = _feed(KeyIndex(memory_keys=10**9), keys, batch=700)
    want = _reference(key_hashes(keys), np.arange(len(keys)))
    assert np.array_equal(unbounded, want)
    assert np.array_equal(got, want)
    assert (got >= 0).sum() > 5_000  # the test exercised many duplicates
    assert bounded._index.n_runs >= 2  # and several runs on disk, some merged
    assert list(tmp_path.iterdir())  # the runs are under the given folder
    bounded.close()
    assert not list(tmp_path.iterdir())


def test_a_duplicate_points_at_the_first_row_even_when_that_row_is_on_disk() -> None:
    index = HashIndex(memory_keys=4)
    index.add(np.array([10, 20, 30, 40, 50], dtype=np.uint64), np.arange(5))  # spills
    assert index.n_runs == 1
    index.add(np.array([60], dtype=np.uint64), np.array([5]))  # stays in memory
    looked = index.lookup(np.array([5, 30, 60, 70], dtype=np.uint64))
    assert looked.tolist() == [-1, 2, 5, -1]
    index.close()


def test_no_false_positive_among_a_million_distinct_keys(tmp_path: Path) -> None:
    n = 1_000_000
    ids = np.random.default_rng(1).permutation(n * 3)[:n]  # distinct, in no particular order
    keys = pd.DataFrame({"id": ids})
    # A small cap and a small filter: the filter lets many lookups through to the runs.
    index = KeyIndex(memory_keys=50_000, bloom_bits=1 << 16, directory=tmp_path)
    got = _feed(index, keys, batch=65_536)
    assert index._index.n_runs >= 1
    assert index._index.n_keys == n
    assert (got == -1).all()
    # A second pass over the same keys finds every one at its own first row.
    again = index.earlier_rows(keys.iloc[:100_000], np.arange(n, n + 100_000))
    assert np.array_equal(again, np.arange(100_000))


def _peak_bytes(n: int, tmp_path: Path) -> int:
    ids = np.arange(n, dtype=np.int64)
    tmp_path.mkdir()
    index = KeyIndex(memory_keys=20_000, bloom_bits=1 << 20, directory=tmp_path, merge_chunk=4096)
    tracemalloc.start()
    for s in range(0, n, 10_000):
        batch = pd.DataFrame({"id": ids[s : s + 10_000]})
        index.earlier_rows(batch, ids[s : s + 10_000])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    index.close()
    return peak


def test_memory_stays_flat_when_the_keys_grow_fourfold(tmp_path: Path) -> None:
    small = _peak_bytes(100_000, tmp_path / "small")
    large = _peak_bytes(400_000, tmp_path / "large")
    # An in-memory index would need 16 bytes more per extra key: 4.8 MB for the 300 k more.
    assert large - small < 1_000_000, (small, large)
    assert large < 8 * 1024 * 1024  # the batch, 20 k keys in memory and the filter


def test_bloom_filter_never_forgets_and_mostly_rejects_strangers() -> None:
    rng = np.random.default_rng(2)
    bloom = BloomFilter(1 << 20)
    added = rng.integers(0, 2**64 - 1, 50_000, dtype=np.uint64)
    bloom.add(added)
    assert bloom.may_contain(added).all()
    strangers = rng.integers(0, 2**64 - 1, 50_000, dtype=np.uint64)
    # About 3 hashes a 64-bit word, 3 bits each: a few in a thousand strangers get through.
    assert bloom.may_contain(strangers).mean() < 0.01
    sorted_bloom = BloomFilter(1 << 20)
    sorted_bloom.add(np.sort(added))  # the fast path for sorted runs sets the same bits
    assert np.array_equal(sorted_bloom._words, bloom._words)
    with pytest.raises(ValueError, match="power of two"):
        BloomFilter(1000)
