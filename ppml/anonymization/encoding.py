"""Integer encoding of the quasi-identifiers, the way ARX represents data.

Every hierarchy's labels are numbered per level (in tree order: rows sorted by their labels from the top level
down); lookup arrays map a code at one level to its code at any higher level, and a data value to its level-0
code. All later work (grouping, roll-up, metrics) runs on these integer codes.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ppml.anonymization._arrow_strings import StringTable, encode, table_of
from ppml.anonymization._kernels import string_kernels
from ppml.anonymization.hierarchy import Hierarchy, missing_value_label
from ppml.errors import input_error

__all__ = ["EncodedAttribute", "encode_column"]


@dataclass
class EncodedAttribute:
    """One hierarchy, numbered in tree order."""

    name: str
    hierarchy: Hierarchy
    labels: list[np.ndarray]  # per level: code -> label (object array)
    share_counts: list[np.ndarray]  # per level: code -> number of hierarchy rows generalized to it (int64)
    leaf_to_level: list[np.ndarray]  # per level: level-0 code -> code at that level
    up: list[list[np.ndarray | None]]  # up[a][b]: code at level a -> code at level b (b >= a)
    lookup: dict[str, int]  # original value -> level-0 code
    leaf_values: pa.Array | None = None  # the level-0 values, for vectorized lookups with Arrow
    leaf_value_codes: np.ndarray | None = None  # code of each entry of ``leaf_values``
    #: per level: the labels as strings in Arrow and the level-0 code -> code map as int32 (for the release)
    label_arrays: list[pa.Array] = dataclasses.field(default_factory=list)
    leaf_to_level32: list[np.ndarray] = dataclasses.field(default_factory=list)
    _groups: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict, repr=False)
    #: the compiled string lookup's table of the values, built on first use and shared by the renamed copies that
    #: :meth:`build` hands out (it depends only on the hierarchy)
    _string_tables: dict[str, StringTable] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def height(self) -> int:
        return len(self.labels)

    def cardinality(self, level: int) -> int:
        return len(self.labels[level])

    @classmethod
    def build(cls, name: str, hierarchy: Hierarchy) -> EncodedAttribute:
        """Encode a hierarchy; cached per (immutable) hierarchy, since repeated runs reuse their configuration."""
        with _ENCODED_LOCK:
            cached = _ENCODED.get(hierarchy)
            if cached is not None:
                _ENCODED.move_to_end(hierarchy)
        if cached is None:
            cached = cls._encode(name, hierarchy)
            with _ENCODED_LOCK:
                _ENCODED[hierarchy] = cached
                while len(_ENCODED) > ENCODED_CACHE_SIZE:
                    _ENCODED.popitem(last=False)
        return cached if cached.name == name else dataclasses.replace(cached, name=name)

    def level_groups(self, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Codes at ``start`` grouped by every level from ``start`` up, for ``np.add.reduceat`` over all at once.

        Labels are numbered in tree order, so each label's descendants at ``start`` are a contiguous run of codes.
        Returns the run starts of all levels concatenated, each level's runs followed by the index one past the
        last code (an empty row appended by the caller keeps the levels apart), and where each level's rows begin.
        """
        cached = self._groups.get(start)
        if cached is None:
            card = self.cardinality(start)
            starts, blocks, position = [], [], 0
            for level in range(start, self.height):
                mapping = self.up[start][level]
                assert mapping is not None
                first = np.flatnonzero(np.diff(mapping, prepend=-1))
                starts += [first, np.array([card])]
                blocks.append(position)
                position += len(first) + 1
            cached = (np.concatenate(starts), np.array(blocks))
            self._groups[start] = cached
        return cached

    def value_table(self, kernels: ModuleType) -> StringTable:
        """The hierarchy's level-0 values and their codes, for :func:`ppml.anonymization._arrow_strings.encode`."""
        table = self._string_tables.get("values")
        if table is None:
            assert self.leaf_values is not None and self.leaf_value_codes is not None
            table = self._string_tables["values"] = table_of(self.leaf_values, self.leaf_value_codes, kernels)
        return table

    @classmethod
    def _encode(cls, name: str, hierarchy: Hierarchy) -> EncodedAttribute:
        rows = hierarchy.rows
        height = hierarchy.height
        order = sorted(range(len(rows)), key=lambda r: tuple(reversed(rows[r])))
        labels: list[np.ndarray] = []
        codes_per_level: list[np.ndarray] = []  # position in ``order`` -> code
        share_counts: list[np.ndarray] = []
        for level in range(height):
            seen: dict[str, int] = {}
            codes = np.empty(len(rows), dtype=np.int64)
            for position, r in enumerate(order):
                codes[position] = seen.setdefault(rows[r][level], len(seen))
            labels.append(np.array(list(seen), dtype=object))
            codes_per_level.append(codes)
            share_counts.append(np.bincount(codes, minlength=len(seen)).astype(np.int64))
        leaf_codes = codes_per_level[0]
        leaf_to_level = []
        for level in range(height):
            mapping = np.zeros(len(labels[0]), dtype=np.int64)
            mapping[leaf_codes] = codes_per_level[level]
            leaf_to_level.append(mapping)
        up: list[list[np.ndarray | None]] = [[None] * height for _ in range(height)]
        for a in range(height):
            for b in range(a, height):
                mapping = np.zeros(len(labels[a]), dtype=np.int64)
                mapping[codes_per_level[a]] = codes_per_level[b]
                up[a][b] = mapping
        lookup = {rows[r][0]: int(leaf_codes[position]) for position, r in enumerate(order)}
        leaf_values = pa.array(list(lookup), pa.large_string())
        leaf_value_codes = np.fromiter(lookup.values(), dtype=np.int64, count=len(lookup))
        for array in [*labels, *share_counts, *leaf_to_level, *(m for row in up for m in row if m is not None)]:
            array.setflags(write=False)  # shared by every run that uses this hierarchy
        leaf_value_codes.setflags(write=False)
        label_arrays = [pa.array([str(label) for label in level_labels], pa.large_string()) for level_labels in labels]
        leaf_to_level32 = [mapping.astype(np.int32) for mapping in leaf_to_level]
        return cls(
            name,
            hierarchy,
            labels,
            share_counts,
            leaf_to_level,
            up,
            lookup,
            leaf_values,
            leaf_value_codes,
            label_arrays,
            leaf_to_level32,
        )


#: encodings of the most recently used hierarchies (immutable, so an encoding stays valid); least recently used
#: ones are dropped (an encoding refers to its hierarchy, so a weak-key cache would never drop anything)
ENCODED_CACHE_SIZE = 64
_ENCODED: OrderedDict[Hierarchy, EncodedAttribute] = OrderedDict()
_ENCODED_LOCK = threading.Lock()


def encode_column(
    values: pd.Series, attribute: EncodedAttribute, source: str, out: np.ndarray | None = None
) -> np.ndarray:
    """Level-0 codes (int64) of a data column; a value missing from the hierarchy is an error naming both.

    ``out`` (int64, one per value) receives the codes without an intermediate copy; it is also returned.
    """
    if attribute.leaf_values is not None and pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        # Arrow-backed strings (pandas' default): one vectorized hash lookup against the hierarchy's values.
        array = (
            pa.array(values.array, type=pa.large_string()) if not isinstance(values.array, pa.Array) else values.array
        )
        compiled = string_kernels()
        if compiled is not None and (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            codes = np.empty(len(values), dtype=np.int64) if out is None else out
            if encode(array, attribute.value_table(compiled), codes, compiled):
                return codes
        index = pc.index_in(array, value_set=attribute.leaf_values)
        if index.null_count == 0:
            assert attribute.leaf_value_codes is not None
            positions = index.to_numpy(zero_copy_only=False)
            if out is None:
                out = np.empty(len(positions), dtype=np.int64)
            np.take(attribute.leaf_value_codes, positions, out=out, mode="clip")  # positions are valid
            return out
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    keys = [str(v) for v in uniques]
    mapped = np.empty(len(keys) + 1, dtype=np.int64)
    missing: list[str] = []
    for i, key in enumerate(keys):
        code = attribute.lookup.get(key)
        if code is None:
            missing.append(key)
        else:
            mapped[i] = code
    if (codes < 0).any():
        code = attribute.lookup.get(missing_value_label())
        if code is None:
            raise input_error(
                source,
                attribute.name,
                "has missing values, which the hierarchy does not cover",
                "fill or drop them, or add a hierarchy row for the empty value",
            )
        mapped[-1] = code
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise input_error(
            source,
            attribute.name,
            f"value {shown}{more} is not in the hierarchy {attribute.hierarchy.source}",
            f"add a row for it to the hierarchy of '{attribute.name}' or correct the data",
        )
    if out is None:
        return mapped[codes]
    np.take(mapped, codes, out=out)
    return out
