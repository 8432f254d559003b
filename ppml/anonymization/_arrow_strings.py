"""Arrow string columns to hierarchy codes and codes to label columns, with the compiled loops (issue 15).

The engine's general path uses Arrow's ``index_in`` (encoding) and ``take`` (release); when the compiled kernels
are in use (:func:`ppml.anonymization._kernels.string_kernels`), these functions do the same work on the
columns' buffers at a fraction of the per-string cost. Results are identical: a value gets a code only when it
equals a hierarchy value byte for byte, and anything else (nulls, values missing from the hierarchy) makes
:func:`encode` return False so that the caller's general path handles it and raises its usual error.

The per-hierarchy tables (:class:`StringTable`) depend only on the hierarchy, so the encoded attribute caches
them (:meth:`ppml.anonymization.encoding.EncodedAttribute.value_table`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pyarrow as pa

__all__ = ["LITTLE_ENDIAN", "StringTable", "encode", "table_of"]

#: the kernels read string bytes as little-endian words
LITTLE_ENDIAN = sys.byteorder == "little"


@dataclass(frozen=True)
class StringTable:
    """Distinct strings (per string: its length, first and last 8 bytes, all its words; see
    :func:`ppml.anonymization._string_kernels.build_table`), a hash table over them, and the code each one stands
    for."""

    table: np.ndarray
    slots: np.ndarray
    bits: int
    codes: np.ndarray


def _readonly(array: np.ndarray) -> np.ndarray:
    """The array made read-only: one array type per argument, so that numba compiles each kernel once."""
    if array.flags.writeable:
        array.setflags(write=False)
    return array


def _buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets as int64, the data buffer's full 8-byte words, its bytes from the last full word on, zero-padded)
    of a string array, read-only; the buffers are copied only when not 8-byte aligned or the offsets 32-bit."""
    _, offsets_buffer, data_buffer = array.buffers()
    large = pa.types.is_large_string(array.type)
    itemsize = 8 if large else 4
    offsets = np.frombuffer(
        offsets_buffer, dtype=np.int64 if large else np.int32, count=len(array) + 1, offset=array.offset * itemsize
    )
    if not large or not offsets.flags.aligned:
        offsets = offsets.astype(np.int64)
    data = np.zeros(0, np.uint8) if data_buffer is None else np.frombuffer(data_buffer, dtype=np.uint8)
    if data_buffer is not None and data_buffer.address % 8:
        data = data.copy()
    full = len(data) // 8
    words = data[: full * 8].view(np.uint64)
    start = max(full - 1, 0) * 8
    tail = np.zeros((len(data) - start) // 8 + 2, dtype=np.uint64)
    tail.view(np.uint8)[: len(data) - start] = data[start:]
    return _readonly(offsets), _readonly(words), _readonly(tail)


def table_of(strings: pa.Array, codes: np.ndarray, kernels: ModuleType) -> StringTable:
    """The hash table of distinct strings (a hierarchy's values or one level's labels) and their codes."""
    offsets, words, tail = _buffers(strings)
    longest = int((offsets[1:] - offsets[:-1]).max()) if len(strings) else 0
    bits = max(1, int(2 * max(len(strings), 1) - 1).bit_length())  # at least twice as many slots as strings
    table, slots = kernels.build_table(offsets, words, tail, max(1, (longest + 7) // 8), bits)
    return StringTable(_readonly(table), _readonly(slots), bits, _readonly(np.array(codes, np.int64)))


def encode(values: pa.Array | pa.ChunkedArray, table: StringTable, out: np.ndarray, kernels: ModuleType) -> bool:
    """Write every value's code into ``out``; False (``out`` partly written) when a value is null or not in the
    table, so that the caller's general path reports it."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    start = 0
    for chunk in chunks:
        if chunk.null_count:
            return False
        offsets, words, tail = _buffers(chunk)
        end = start + len(chunk)
        part = out[start:end]
        missing, long_values = kernels.lookup(
            offsets, words, tail, table.table, table.slots, table.bits, table.codes, part
        )
        if missing >= 0 or (
            long_values and kernels.check_middle(offsets, words, tail, table.table, table.slots, table.codes, part) >= 0
        ):
            return False
        start = end
    return True
