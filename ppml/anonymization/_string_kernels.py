"""Compiled loops over Arrow string buffers: a column's values -> their hierarchy codes (issue 15).

Imported only by :mod:`ppml.anonymization._kernels` when the compiled kernels are in use (it imports numba).
Encoding the nine Adult QIs with Arrow's ``index_in`` costs about 9 ns per value, the largest part of a small
problem's fixed per-call work; these loops read the strings eight bytes at a time (hash and comparison of a value
of up to 16 bytes are a few word operations), about 6 ns per value as measured on 2 loaded cores. Strings are
compared in full (length and every byte), so a code is only ever assigned to a value equal to the hierarchy's;
anything not found is reported and handled by the caller's general path. Little-endian machines only (the
caller checks).
"""

from __future__ import annotations

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@numba.njit(cache=True, nogil=True)
def _word(words: np.ndarray, tail: np.ndarray, position: int, count: int) -> np.uint64:  # pragma: no cover
    """``count`` (0-8) bytes from byte ``position`` as a little-endian word, higher bytes zero. ``words`` holds the
    buffer's full 8-byte words, ``tail`` its bytes from the last full word on, zero-padded. Not inlined by LLVM, a
    call costs about 20 ns (reference counts of the arrays), so :func:`lookup`, run per record, repeats its body."""
    index = position >> 3
    if index + 1 < words.shape[0]:
        low, high = words[index], words[index + 1]
    else:
        low, high = tail[index - max(words.shape[0] - 1, 0)], tail[index - max(words.shape[0] - 1, 0) + 1]
    shift = np.uint64((position & 7) * 8)
    value = (low >> shift) | ((high << np.uint64(1)) << (np.uint64(63) - shift))
    return value & ~((_ALL << np.uint64(1)) << np.uint64(8 * count - 1)) if count > 0 else np.uint64(0)


@numba.njit(cache=True, nogil=True)
def build_table(
    offsets: np.ndarray, words: np.ndarray, tail: np.ndarray, width: int, bits: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """Open-addressing table of the (distinct) strings: per string (row) its length, first and last 8 bytes
    (columns 0-2: all of a string of up to 16 bytes) and all its words (from column 3), and 2**bits slots. A
    string's slot comes from its length and first and last 8 bytes."""
    m = offsets.shape[0] - 1
    table = np.zeros((m, 3 + width), dtype=np.uint64)
    slots = np.full(1 << bits, -1, dtype=np.int64)
    mask = (1 << bits) - 1
    shift = np.uint64(64 - bits)
    for leaf in range(m):
        start = offsets[leaf]
        length = offsets[leaf + 1] - start
        first = _word(words, tail, start, min(8, length))
        last = _word(words, tail, start + max(length - 8, 0), min(8, length))
        table[leaf, 0], table[leaf, 1], table[leaf, 2] = length, first, last
        for c in range((length + 7) >> 3):
            table[leaf, 3 + c] = _word(words, tail, start + 8 * c, min(8, length - 8 * c))
        slot = np.int64(((((np.uint64(length) * _GOLDEN) ^ first) * _GOLDEN ^ last) * _GOLDEN) >> shift)
        while slots[slot] >= 0:
            slot = (slot + 1) & mask
        slots[slot] = leaf
    return table, slots


@numba.njit(cache=True, nogil=True)
def lookup(
    offsets: np.ndarray,
    words: np.ndarray,
    tail: np.ndarray,
    table: np.ndarray,
    slots: np.ndarray,
    bits: int,
    codes: np.ndarray,
    out: np.ndarray,
) -> tuple[int, int]:  # pragma: no cover - compiled
    """``out[r]`` = ``codes`` of the table string equal to string r; returns (-1, or the first r not in the table,
    and the number of strings over 16 bytes).

    A string of up to 16 bytes equals a table string when the lengths and the first and last 8 bytes agree; for a
    longer one, whose ``out`` is ``-1 - (slot of the first such table string)``, :func:`check_middle` compares the
    words between (doing that here, even in a branch rarely taken, makes this loop about half as fast)."""
    mask = slots.shape[0] - 1
    shift = np.uint64(64 - bits)
    full = words.shape[0]
    tail_start = max(full - 1, 0)
    long_rows = 0
    for r in range(offsets.shape[0] - 1):
        start = offsets[r]
        length = offsets[r + 1] - start
        keep = ~((_ALL << np.uint64(1)) << np.uint64(8 * min(8, length) - 1)) if length > 0 else np.uint64(0)
        # first and last 8 bytes (the body of _word, twice)
        index = start >> 3
        if index + 1 < full:
            low, high = words[index], words[index + 1]
        else:
            low, high = tail[index - tail_start], tail[index - tail_start + 1]
        byte_shift = np.uint64((start & 7) * 8)
        first = ((low >> byte_shift) | ((high << np.uint64(1)) << (np.uint64(63) - byte_shift))) & keep
        position = start + max(length - 8, 0)
        index = position >> 3
        if index + 1 < full:
            low, high = words[index], words[index + 1]
        else:
            low, high = tail[index - tail_start], tail[index - tail_start + 1]
        byte_shift = np.uint64((position & 7) * 8)
        last = ((low >> byte_shift) | ((high << np.uint64(1)) << (np.uint64(63) - byte_shift))) & keep
        slot = np.int64(((((np.uint64(length) * _GOLDEN) ^ first) * _GOLDEN ^ last) * _GOLDEN) >> shift)
        while True:
            leaf = slots[slot]
            if leaf < 0:
                return r, long_rows
            if table[leaf, 0] == np.uint64(length) and table[leaf, 1] == first and table[leaf, 2] == last:
                if length <= 16:
                    out[r] = codes[leaf]
                else:  # the words between are compared by check_middle
                    out[r] = -1 - slot
                    long_rows += 1
                break
            slot = (slot + 1) & mask
    return -1, long_rows


@numba.njit(cache=True, nogil=True)
def check_middle(
    offsets: np.ndarray,
    words: np.ndarray,
    tail: np.ndarray,
    table: np.ndarray,
    slots: np.ndarray,
    codes: np.ndarray,
    out: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Finish :func:`lookup` for strings over 16 bytes (``out`` = ``-1 - slot`` of the first table string with
    their length and first and last 8 bytes): probe on from that slot for the table string whose words in between
    are also theirs; returns -1, or the first r without one."""
    full = words.shape[0]
    tail_start = max(full - 1, 0)
    mask = slots.shape[0] - 1
    for r in range(out.shape[0]):
        if out[r] >= 0:
            continue
        slot = -1 - out[r]
        first = slots[slot]
        start = offsets[r]
        while True:
            leaf = slots[slot]
            if leaf < 0:
                return r
            same = table[leaf, 0] == table[first, 0] and table[leaf, 1] == table[first, 1]
            if same and table[leaf, 2] == table[first, 2]:
                for c in range(1, (offsets[r + 1] - start - 1) >> 3):  # the full words between
                    position = start + 8 * c
                    index = position >> 3  # the body of _word (a call costs more than the comparison)
                    if index + 1 < full:
                        low, high = words[index], words[index + 1]
                    else:
                        low, high = tail[index - tail_start], tail[index - tail_start + 1]
                    shift = np.uint64((position & 7) * 8)
                    if table[leaf, 3 + c] != (low >> shift) | ((high << np.uint64(1)) << (np.uint64(63) - shift)):
                        same = False
                        break
                if same:
                    out[r] = codes[leaf]
                    break
            slot = (slot + 1) & mask
    return -1
