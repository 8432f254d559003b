"""Automatic hierarchies for released columns that the release-safety step turns into quasi-identifiers.

``generalize`` gives a numeric column nested equal-width intervals (widths w, 2w, 4w with a "nice" w from the
column's range) and a categorical column the two levels value -> ``*``; ``bin`` replaces a numeric column by
quantile bins (level 0 is already a bin, so the exact value is never released) whose coarser levels merge
adjacent pairs of bins. Both are built from the data at release time and end with ``*``, like every hierarchy.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ppml.anonymization.hierarchy import SUPPRESSED, Hierarchy

__all__ = ["as_integers", "generalization_hierarchy", "quantile_binning"]

#: how many equal-width bins the finest interval level has, at most
_FINEST_BINS = 16


#: The bin of a missing value (``numeric_missing: category``): the missing marker, which preparation shows as
#: its own category and which generalizes only to ``*``.
MISSING_BIN = "?"


def as_integers(values: pd.Series, *, allow_missing: bool = False) -> pd.Series | None:
    """The column as integers when every value is one (text "39" included), else ``None`` (categorical).

    With ``allow_missing`` a missing cell (``<NA>`` of a ``numeric_missing: category`` column) is allowed and
    dropped: the integers of the values present."""
    if allow_missing:
        values = values[values.notna()]
    numbers = pd.to_numeric(values, errors="coerce")
    if numbers.isna().any() or not np.all(np.isfinite(numbers)) or (numbers != np.round(numbers)).any():
        return None
    return numbers.astype("int64")


def _nice_width(span: float) -> int:
    """The smallest width of the form 1, 2 or 5 x 10^j that covers ``span`` in at most ``_FINEST_BINS`` bins."""
    target = max(span / _FINEST_BINS, 1.0)
    exponent = math.floor(math.log10(target))
    for step in (1, 2, 5, 10):
        width = step * 10**exponent
        if width >= target:
            return int(width)
    return int(10 ** (exponent + 1))  # pragma: no cover - the loop always returns


def generalization_hierarchy(values: pd.Series, name: str) -> Hierarchy:
    """Intervals for an integer column, value -> ``*`` for any other: built from the column's distinct values."""
    integers = as_integers(values)
    source = f"release safety: automatic hierarchy of '{name}'"
    if integers is None:
        distinct = sorted({str(v) for v in values})
        return Hierarchy(tuple((value, SUPPRESSED) for value in distinct), source)
    low, high = int(integers.min()), int(integers.max())
    width = _nice_width(high - low + 1)
    widths = [width * factor for factor in (1, 2, 4) if width * factor < high - low + 1 or factor == 1]
    rows = []
    for value in sorted(set(integers.tolist())):
        row = [str(value)]
        for step in widths:
            start = (value // step) * step
            row.append(f"{start}-{start + step - 1}")
        rows.append((*row, SUPPRESSED))
    return Hierarchy(tuple(rows), source)


def quantile_binning(values: pd.Series, bins: int, name: str) -> tuple[pd.Series, Hierarchy]:
    """Replace an integer column by at most ``bins`` quantile bins; the hierarchy merges adjacent pairs.

    A column that is mostly zero (capital gains) keeps 0 as its own bin and takes quantiles of the rest, so the
    bins do not all collapse onto 0. Labels are the smallest and largest value a bin holds in the data.
    """
    integers = as_integers(values, allow_missing=True)
    if integers is None:
        raise ValueError(f"'{name}' is not an integer column")
    missing = values.isna().to_numpy()
    if missing.any():  # binned over the values present; a missing value is its own bin, MISSING_BIN
        out = pd.Series(MISSING_BIN, index=values.index, dtype=object)
        present: tuple[tuple[str, ...], ...] = ()
        if (~missing).any():
            binned, hierarchy = quantile_binning(values[~missing].astype("int64"), bins, name)
            out[~missing] = binned.to_numpy()
            present = hierarchy.rows
        depth = len(present[0]) if present else 2
        rows = (*present, (MISSING_BIN,) * (depth - 1) + (SUPPRESSED,))
        return out, Hierarchy(rows, hierarchy_source(name))
    numbers = integers.to_numpy()
    positive = numbers[numbers > 0]
    zero_heavy = (numbers == 0).mean() > 0.5 and positive.size > 0
    source = positive if zero_heavy else numbers
    edges = np.unique(np.quantile(source, np.linspace(0, 1, bins + 1))[1:-1])
    if zero_heavy:
        edges = np.unique(np.concatenate([[0.5], edges[edges > 0.5]]))
    codes = np.searchsorted(edges, numbers, side="right")
    levels = [codes]
    while int(levels[-1].max()) > 1:
        levels.append(levels[-1] // 2)
    label_of = [_range_labels(numbers, level) for level in levels]
    binned = pd.Series([label_of[0][c] for c in codes], index=values.index, dtype=object)
    rows = {
        label_of[0][c]: (label_of[0][c], *(label_of[j][c >> j] for j in range(1, len(levels))), SUPPRESSED)
        for c in np.unique(codes).tolist()
    }
    return binned, Hierarchy(tuple(rows.values()), hierarchy_source(name))


def hierarchy_source(name: str) -> str:
    return f"release safety: quantile bins of '{name}'"


def _range_labels(numbers: np.ndarray, codes: np.ndarray) -> dict[int, str]:
    """``lo-hi`` (or the single value) of the data values in each bin."""
    frame = pd.DataFrame({"code": codes, "value": numbers}).groupby("code")["value"].agg(["min", "max"])
    return {
        int(code): f"{int(row['min'])}" if row["min"] == row["max"] else f"{int(row['min'])}-{int(row['max'])}"
        for code, row in frame.iterrows()
    }
