"""The roll-up's inner loop (generalize a class table and group equal tuples), compiled when numba is present.

numba turns the per-check cost on the Adult benchmark from about a millisecond (numpy: gathers, a mixed-radix key
and a hash factorization through pandas) into tens of microseconds, which is what brings the search to ARX's
speed. Without numba the same function runs through an equivalent numpy path; results are identical (tested).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

try:  # pragma: no cover - exercised in both configurations by the test suite's equivalence test
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "group_rollup", "sum_rows"]


def _group_rollup_python(
    codes: np.ndarray,
    maps: np.ndarray,
    offsets: np.ndarray,
    cards: np.ndarray,
    counts: np.ndarray,
    source_cards: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generalize (``offsets[i]`` < 0: attribute unchanged) and group; returns (inverse per source row, new codes
    (d, g), new counts (g,)). ``cards`` are the target levels' cardinalities, ``source_cards`` the source's."""
    d, c = codes.shape
    columns = [codes[i] if offsets[i] < 0 else maps[offsets[i] + codes[i]] for i in range(d)]
    key = np.zeros(c, dtype=np.int64)
    for i in range(d):
        key *= cards[i]
        key += columns[i]
    inverse, uniques = pd.factorize(key)
    groups = len(uniques)
    new_counts = np.bincount(inverse, weights=counts, minlength=groups).astype(np.int64)
    first = np.empty(groups, dtype=np.int64)
    first[inverse[::-1]] = np.arange(c - 1, -1, -1)
    new_codes = np.stack([column[first] for column in columns]) if d else np.zeros((0, groups), np.int64)
    return inverse.astype(np.int64), new_codes, new_counts


def _group_rollup_loop(
    codes: np.ndarray,
    maps: np.ndarray,
    offsets: np.ndarray,
    cards: np.ndarray,
    counts: np.ndarray,
    source_cards: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled by numba
    d, c = codes.shape
    # Mixed-radix key of every row, attribute by attribute (sequential memory access): a per-attribute table
    # holds each source code's generalized code times the attribute's stride.
    keys = np.zeros(c, dtype=np.int64)
    stride = 1
    for i in range(d - 1, -1, -1):
        source_card = source_cards[i]
        table = np.empty(source_card, dtype=np.int64)
        for value in range(source_card):
            mapped = maps[offsets[i] + value] if offsets[i] >= 0 else value
            table[value] = mapped * stride
        for row in range(c):
            keys[row] += table[codes[i, row]]
        stride *= cards[i]
    size = 1
    bits = 0
    while size < 2 * c:
        size *= 2
        bits += 1
    mask = size - 1
    shift = np.uint64(64 - bits) if bits > 0 else np.uint64(63)
    golden = np.uint64(0x9E3779B97F4A7C15)
    table_keys = np.full(size, -1, dtype=np.int64)
    table_ids = np.zeros(size, dtype=np.int64)
    inverse = np.empty(c, dtype=np.int64)
    first = np.empty(c, dtype=np.int64)
    new_counts = np.zeros(c, dtype=np.int64)
    groups = 0
    for row in range(c):
        key = keys[row]
        slot = np.int64((np.uint64(key) * golden) >> shift) & mask  # Fibonacci hashing: high bits
        while True:
            stored = table_keys[slot]
            if stored == key:
                group = table_ids[slot]
                break
            if stored == -1:
                table_keys[slot] = key
                table_ids[slot] = groups
                group = groups
                first[groups] = row
                groups += 1
                break
            slot = (slot + 1) & mask
        inverse[row] = group
        new_counts[group] += counts[row]
    new_codes = np.empty((d, groups), dtype=np.int64)
    for group in range(groups):
        row = first[group]
        for i in range(d):
            value = codes[i, row]
            if offsets[i] >= 0:
                value = maps[offsets[i] + value]
            new_codes[i, group] = value
    return inverse, new_codes, new_counts[:groups].copy()


def _sum_rows_python(values: np.ndarray, inverse: np.ndarray, groups: int) -> np.ndarray:
    """Sum the rows of ``values`` (c, w) into ``groups`` rows by ``inverse``."""
    width = values.shape[1]
    flat = (inverse[:, None] * width + np.arange(width)[None, :]).reshape(-1)
    merged = np.bincount(flat, weights=values.reshape(-1), minlength=groups * width)
    return merged.reshape(groups, width).astype(np.int64)


def _sum_rows_loop(values: np.ndarray, inverse: np.ndarray, groups: int) -> np.ndarray:  # pragma: no cover
    out = np.zeros((groups, values.shape[1]), dtype=np.int64)
    for row in range(values.shape[0]):
        target = inverse[row]
        for column in range(values.shape[1]):
            out[target, column] += values[row, column]
    return out


sum_rows = numba.njit(cache=True, nogil=True)(_sum_rows_loop) if HAVE_NUMBA else _sum_rows_python
group_rollup = numba.njit(cache=True, nogil=True)(_group_rollup_loop) if HAVE_NUMBA else _group_rollup_python

group_rollup_numpy = _group_rollup_python
