"""Integer encoding of the quasi-identifiers, the way ARX represents data.

Every hierarchy's labels are numbered per level (in tree order: rows sorted by their labels from the top level
down); lookup arrays map a code at one level to its code at any higher level, and a data value to its level-0
code. All later work (grouping, roll-up, metrics) runs on these integer codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

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

    @property
    def height(self) -> int:
        return len(self.labels)

    def cardinality(self, level: int) -> int:
        return len(self.labels[level])

    @classmethod
    def build(cls, name: str, hierarchy: Hierarchy) -> EncodedAttribute:
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
        return cls(name, hierarchy, labels, share_counts, leaf_to_level, up, lookup, leaf_values, leaf_value_codes)


def encode_column(values: pd.Series, attribute: EncodedAttribute, source: str) -> np.ndarray:
    """Level-0 codes of a data column; a value missing from the hierarchy is an error naming both."""
    if attribute.leaf_values is not None and pd.api.types.is_string_dtype(values.dtype) and values.dtype != object:
        # Arrow-backed strings (pandas' default): one vectorized hash lookup against the hierarchy's values.
        array = (
            pa.array(values.array, type=pa.large_string()) if not isinstance(values.array, pa.Array) else values.array
        )
        index = pc.index_in(array, value_set=attribute.leaf_values)
        if index.null_count == 0:
            assert attribute.leaf_value_codes is not None
            return attribute.leaf_value_codes[index.to_numpy(zero_copy_only=False)]
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
    return mapped[codes]
