"""The roll-up's inner loops (generalize a class table and group equal tuples), compiled with numba when it pays.

numba turns the per-check cost on the Adult benchmark into tens of microseconds, about twice as fast as the
equivalent numpy path (gathers, a mixed-radix key, a hash factorization through pandas); results are identical
(property-tested). But loading the compiled code costs about half a second per process, more than a whole Adult
search takes without it. So by default (``PPML_ANONYMIZATION_JIT=auto``) the compiled kernels are used once they
are loaded in the process (:func:`warm_up`, for long-running processes and the benchmark) or when the problem is
big enough to repay the load; ``on`` and ``off`` force either path.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from types import ModuleType

import numpy as np
import pandas as pd

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
#: distinct QI tuples x transformations from which compiling repays loading the kernels (about 0.5 s)
COMPILE_WORTH_IT = 2e9
_compiled: tuple[Callable, Callable, Callable] | None = None
_pair_grids: Callable | None = None
_warm = False

__all__ = ["HAVE_NUMBA", "kernels", "pair_grids_kernel", "string_kernels", "warm_up"]


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


def _pair_histograms_python(
    codes: np.ndarray, counts: np.ndarray, first: np.ndarray, second: np.ndarray, widths: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """Record counts of every pair of codes for the attribute pairs (first[p], second[p]), concatenated: pair p's
    dense (rows x widths[p]) histogram, row-major, starts at starts[p]; starts[-1] is the total length."""
    out = np.zeros(int(starts[-1]), dtype=np.int64)
    weights = counts.astype(np.float64)
    for p in range(len(first)):
        size = int(starts[p + 1] - starts[p])
        key = codes[first[p]] * widths[p] + codes[second[p]]
        out[starts[p] : starts[p + 1]] = np.bincount(key, weights=weights, minlength=size).astype(np.int64)
    return out


def _pair_histograms_loop(
    codes: np.ndarray, counts: np.ndarray, first: np.ndarray, second: np.ndarray, widths: np.ndarray, starts: np.ndarray
) -> np.ndarray:  # pragma: no cover - compiled by numba
    d, c = codes.shape
    out = np.zeros(starts[-1], dtype=np.int64)
    row = np.empty(d, dtype=np.int64)
    for r in range(c):
        for i in range(d):
            row[i] = codes[i, r]
        weight = counts[r]
        for p in range(first.shape[0]):
            out[starts[p] + row[first[p]] * widths[p] + row[second[p]]] += weight
    return out


def _pair_grids_loop(
    codes: np.ndarray,
    counts: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    widths: np.ndarray,
    starts: np.ndarray,
    source_levels: np.ndarray,
    heights: np.ndarray,
    cards: np.ndarray,
    offsets: np.ndarray,
    maps: np.ndarray,
    k: int,
) -> np.ndarray:  # pragma: no cover - compiled by numba
    """The pairwise pre-filter's counts in one call (Problem.pair_suppression's numpy path does the same with
    about ten numpy calls per pair): per pair p and levels (a, b) at or above the source's, the records in pair
    cells of fewer than k records, as pair p's (heights[i] x heights[j]) grid, row-major, concatenated.
    ``cards[i, level]`` is a cardinality, ``offsets[i, a, b]`` where attribute i's map from level a to level b
    starts in ``maps`` (-1: the same level)."""
    d, c = codes.shape
    histograms = np.zeros(starts[-1], dtype=np.int64)  # the body of _pair_histograms_loop (a global numba can't call)
    row = np.empty(d, dtype=np.int64)
    for r in range(c):
        for i in range(d):
            row[i] = codes[i, r]
        for p in range(first.shape[0]):
            histograms[starts[p] + row[first[p]] * widths[p] + row[second[p]]] += counts[r]
    grid_sizes = np.array([heights[first[p]] * heights[second[p]] for p in range(first.shape[0])], np.int64)
    grid_starts = np.zeros(first.shape[0] + 1, dtype=np.int64)
    grid_starts[1:] = np.cumsum(grid_sizes)
    grids = np.zeros(grid_starts[-1], dtype=np.int64)
    for p in range(first.shape[0]):
        i, j = first[p], second[p]
        low_i, low_j = source_levels[i], source_levels[j]
        rows, columns = cards[i, low_i], cards[j, low_j]
        for a in range(low_i, heights[i]):
            width_a = cards[i, a]
            merged = np.zeros(width_a * columns, dtype=np.int64)  # rows generalized to level a
            for x in range(rows):
                target = x if offsets[i, low_i, a] < 0 else maps[offsets[i, low_i, a] + x]
                for y in range(columns):
                    merged[target * columns + y] += histograms[starts[p] + x * columns + y]
            for b in range(low_j, heights[j]):
                width_b = cards[j, b]
                cells = np.zeros(width_a * width_b, dtype=np.int64)
                for y in range(columns):
                    target = y if offsets[j, low_j, b] < 0 else maps[offsets[j, low_j, b] + y]
                    for x in range(width_a):
                        cells[x * width_b + target] += merged[x * columns + y]
                forced = 0
                for cell in range(cells.shape[0]):
                    if cells[cell] < k:
                        forced += cells[cell]
                grids[grid_starts[p] + a * heights[j] + b] = forced
    return grids


def _load() -> tuple[Callable, Callable, Callable]:
    global _compiled
    if _compiled is None:
        import numba

        _compiled = (
            numba.njit(cache=True, nogil=True)(_group_rollup_loop),
            numba.njit(cache=True, nogil=True)(_sum_rows_loop),
            numba.njit(cache=True, nogil=True)(_pair_histograms_loop),
        )
    return _compiled


def _load_pair_grids() -> Callable:
    """The compiled :func:`_pair_grids_loop`."""
    global _pair_grids
    if _pair_grids is None:
        import numba

        _pair_grids = numba.njit(cache=True, nogil=True)(_pair_grids_loop)
    return _pair_grids


def _mode() -> str:
    return os.environ.get("PPML_ANONYMIZATION_JIT", "auto").strip().lower()


def warm_up() -> bool:
    """Load (compiling once per machine) the numba kernels now; True when they are available and enabled."""
    global _warm
    if not HAVE_NUMBA or _mode() == "off":
        return False
    if not _warm:
        group, rows, pairs = _load()
        one = np.ones(1, dtype=np.int64)
        group(np.zeros((1, 2), np.int64), np.zeros(1, np.int64), -one, one, np.ones(2, np.int64), one)
        rows(np.zeros((2, 1), np.int64), np.zeros(2, np.int64), 1)
        zero = np.zeros(1, dtype=np.int64)
        pairs(np.zeros((2, 1), np.int64), one, zero, one, one, np.array([0, 1], np.int64))
        levels, heights = np.zeros(2, np.int64), np.ones(2, np.int64)
        cards, offsets = np.ones((2, 1), np.int64), np.full((2, 1, 1), -1, np.int64)
        codes, starts = np.zeros((2, 1), np.int64), np.array([0, 1], np.int64)
        _load_pair_grids()(codes, one, zero, one, one, starts, levels, heights, cards, offsets, zero, 2)
        _warm_strings()
        _warm = True
    return True


def _warm_strings() -> None:
    """Load the string kernels with the argument types the engine passes (read-only Arrow buffers)."""
    import pyarrow as pa

    from ppml.anonymization import _arrow_strings, _string_kernels

    if not _arrow_strings.LITTLE_ENDIAN:
        return
    values = pa.array(["a", "bcdefghij", ""], pa.large_string())
    table = _arrow_strings.table_of(values, np.arange(3), _string_kernels)
    codes = np.empty(3, dtype=np.int64)
    _arrow_strings.encode(values, table, codes, _string_kernels)


def string_kernels() -> ModuleType | None:
    """The compiled string loops (:mod:`ppml.anonymization._string_kernels`) when the compiled kernels are in use
    in this process (loaded, or forced on), else None: the engine then uses Arrow's index_in and take."""
    mode = _mode()
    if not HAVE_NUMBA or mode == "off" or not (mode == "on" or _warm) or not warm_up():
        return None
    from ppml.anonymization import _arrow_strings, _string_kernels

    return _string_kernels if _arrow_strings.LITTLE_ENDIAN else None


def pair_grids_kernel(work: float) -> Callable | None:
    """The compiled pairwise pre-filter (:func:`_pair_grids_loop`) when :func:`kernels` gives compiled kernels for
    this work, else None (Problem.pair_suppression then takes its numpy path)."""
    return _load_pair_grids() if kernels(work)[0] is not _group_rollup_python else None


def kernels(work: float) -> tuple[Callable, Callable, Callable]:
    """(group_rollup, sum_rows, pair_histograms) for a problem of ``work`` = distinct QI tuples x transformations."""
    mode = _mode()
    if HAVE_NUMBA and mode != "off" and (mode == "on" or _warm or work >= COMPILE_WORTH_IT) and warm_up():
        return _load()
    return _group_rollup_python, _sum_rows_python, _pair_histograms_python


group_rollup_numpy = _group_rollup_python
sum_rows_numpy = _sum_rows_python
pair_histograms_numpy = _pair_histograms_python
