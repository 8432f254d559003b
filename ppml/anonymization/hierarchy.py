"""Generalization hierarchies: ARX's CSV format and hierarchies built from a short spec.

A hierarchy is a table with one row per original value; column ``j`` holds the value's label at generalization
level ``j`` (level 0 is the value itself, the last level is usually ``*``). The engine relies on two properties
that are validated here, because ARX silently misbehaves without them: every row has the same number of levels,
and every label has exactly one parent on the next level (the hierarchy is a tree), which is what makes
full-domain generalization well defined and privacy models monotone.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppml.errors import input_error

__all__ = ["Hierarchy", "HierarchySpec", "missing_value_label"]

SUPPRESSED = "*"


def missing_value_label() -> str:
    """The label a missing (NaN/None) data value is looked up under; add a row for it to allow missing values."""
    return ""


@dataclass(frozen=True)
class Hierarchy:
    """A validated generalization hierarchy (rows of labels, level 0 = original value)."""

    rows: tuple[tuple[str, ...], ...]
    source: str = "hierarchy"

    def __post_init__(self) -> None:
        _validate(self.rows, self.source)

    @property
    def height(self) -> int:
        """Number of generalization levels, including level 0."""
        return len(self.rows[0])

    @property
    def domain_size(self) -> int:
        """Number of rows: ARX's domain size for the Loss metric."""
        return len(self.rows)

    def values(self) -> list[str]:
        return [row[0] for row in self.rows]

    def generalize(self, value: str, level: int) -> str:
        """The label of one value at one level (convenience; the engine uses encoded lookups)."""
        for row in self.rows:
            if row[0] == value:
                return row[level]
        raise input_error(self.source, "value", f"'{value}' is not in the hierarchy", "add a row for it")

    @classmethod
    def from_rows(cls, rows: Iterable[Sequence[Any]], source: str = "hierarchy") -> Hierarchy:
        return cls(tuple(tuple(str(cell) for cell in row) for row in rows), source)

    @classmethod
    def from_csv(cls, path: str | Path, sep: str = ";") -> Hierarchy:
        """Read ARX's hierarchy CSV: ``sep``-separated, no header, one row per original value."""
        file = Path(path)
        source = str(path)
        if not file.is_file():
            raise input_error(source, "(file)", "hierarchy file not found", "pass an existing ARX hierarchy CSV")
        try:
            text = file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise input_error(source, "(file)", "not UTF-8 text", "save the hierarchy as UTF-8") from None
        rows = [line.rstrip("\r").split(sep) for line in text.split("\n") if line.strip()]
        return cls(tuple(tuple(rows_cell.strip() for rows_cell in row) for row in rows), source)

    def to_csv(self, path: str | Path, sep: str = ";") -> None:
        Path(path).write_text("\n".join(sep.join(row) for row in self.rows) + "\n", encoding="utf-8")


def _validate(rows: tuple[tuple[str, ...], ...], source: str) -> None:
    if not rows:
        raise input_error(source, "(file)", "the hierarchy has no rows", "add one row per original value")
    width = len(rows[0])
    if width < 1 or rows[0] == ("",):
        raise input_error(source, "row 1", "empty row", "write the value and its generalizations, ;-separated")
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise input_error(
                source,
                f"row {number}",
                f"has {len(row)} levels but row 1 has {width} (rows of different lengths)",
                "give every row the same number of ;-separated levels",
            )
    for level in range(width):
        parent: dict[str, str] = {}
        seen_at: dict[str, int] = {}
        for number, row in enumerate(rows, start=1):
            label = row[level]
            if level == 0:
                if label in seen_at:
                    raise input_error(
                        source,
                        f"row {number}",
                        f"value '{label}' appears twice (rows {seen_at[label]} and {number}), so it would map "
                        "to two parents",
                        "keep exactly one row per original value",
                    )
                seen_at[label] = number
            if level + 1 < width:
                up = row[level + 1]
                known = parent.setdefault(label, up)
                if known != up:
                    raise input_error(
                        source,
                        f"row {number}",
                        f"'{label}' at level {level} maps to two parents: '{known}' and '{up}'",
                        "make every label generalize to exactly one label on the next level",
                    )
    _check_across_levels(rows, source)


def _check_across_levels(rows: tuple[tuple[str, ...], ...], source: str) -> None:
    """A label reused on several levels must keep one parent, and no label may generalize back to itself.

    Without this, ``a;b;*`` with ``b;a;*`` (a cycle) or ``a;x;*`` with ``x;y;*`` (``x`` means two different
    things) pass the per-level checks, yet a released label no longer says which values it stands for.
    """
    parent: dict[str, tuple[str, int]] = {}
    for number, row in enumerate(rows, start=1):
        for label, up in itertools.pairwise(row):
            if label == up:
                continue  # a value kept unchanged on the next level
            known = parent.setdefault(label, (up, number))
            if known[0] != up:
                raise input_error(
                    source,
                    f"row {number}",
                    f"label '{label}' generalizes to '{known[0]}' in row {known[1]} but to '{up}' here "
                    "(inconsistent hierarchy)",
                    "use distinct labels on different levels, so every label has exactly one parent",
                )
    for start in parent:
        seen = {start}
        label = start
        while label in parent:
            label = parent[label][0]
            if label in seen:
                raise input_error(
                    source,
                    f"row {parent[start][1]}",
                    f"labels generalize in a cycle through '{start}'",
                    "make every chain of generalizations end in one root label such as '*'",
                )
            seen.add(label)


# --------------------------------------------------------------------------------------------------------------
# Hierarchies from a short spec (policy ``hierarchy_spec``)
# --------------------------------------------------------------------------------------------------------------

_DATE_LEVELS = ("month", "quarter", "year", "decade")


@dataclass(frozen=True)
class HierarchySpec:
    """A hierarchy described by a spec and built from the data's distinct values.

    Formats (documented in docs/anonymization.md):

    - ``{type: interval, widths: [5, 10, 20], start: 0}``: integers; level j groups values into ``lo-hi`` bins of
      width ``widths[j-1]`` aligned at ``start``; each width must be a multiple of the previous one so bins nest.
    - ``{type: date, levels: [month, year]}``: ``YYYY-MM-DD`` dates; levels from month, quarter, year, decade,
      from fine to coarse.
    - ``{type: prefix, keep: [3, 2, 1]}``: codes such as ZIP codes; level j keeps the first ``keep[j-1]``
      characters and masks the rest with ``*`` ("02139" -> "021**" -> "02***" -> "0****").

    Every built hierarchy ends with the level ``*``.
    """

    spec: Mapping[str, Any] = field(default_factory=dict)
    source: str = "hierarchy_spec"

    def __post_init__(self) -> None:
        kind = self.spec.get("type")
        if kind not in ("interval", "date", "prefix"):
            raise input_error(
                self.source, "type", f"unknown hierarchy spec type {kind!r}", "use interval, date or prefix"
            )
        allowed = {"interval": {"type", "widths", "start"}, "date": {"type", "levels"}, "prefix": {"type", "keep"}}
        extra = set(self.spec) - allowed[kind]
        if extra:
            raise input_error(
                self.source, sorted(extra)[0], f"unknown key for a {kind} spec", f"use only {sorted(allowed[kind])}"
            )
        if kind == "interval":
            widths = self.spec.get("widths")
            if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
                raise input_error(self.source, "widths", "needs a list of positive integers", "e.g. [5, 10, 20]")
            for small, big in itertools.pairwise(widths):
                if big % small:
                    raise input_error(
                        self.source,
                        "widths",
                        f"{big} is not a multiple of {small}, so the bins would not nest",
                        "make each width a multiple of the previous one",
                    )
            if not isinstance(self.spec.get("start", 0), int):
                raise input_error(self.source, "start", "must be an integer", "e.g. start: 0")
        elif kind == "date":
            levels = self.spec.get("levels")
            if not levels or any(level not in _DATE_LEVELS for level in levels):
                raise input_error(
                    self.source, "levels", f"needs levels from {list(_DATE_LEVELS)}", "e.g. [month, year]"
                )
            positions = [_DATE_LEVELS.index(level) for level in levels]
            if positions != sorted(set(positions)):
                raise input_error(self.source, "levels", "levels must go from fine to coarse", "e.g. [month, year]")
        else:
            keep = self.spec.get("keep")
            if not keep or not all(isinstance(x, int) and x >= 0 for x in keep):
                raise input_error(self.source, "keep", "needs a list of non-negative integers", "e.g. [3, 2, 1]")
            if list(keep) != sorted(set(keep), reverse=True):
                raise input_error(self.source, "keep", "must be strictly decreasing", "e.g. [3, 2, 1]")

    def build(self, values: Iterable[Any], attribute: str = "") -> Hierarchy:
        """Build the hierarchy over the given distinct values (as strings, the way the data is looked up)."""
        where = f"{self.source}" + (f" ({attribute})" if attribute else "")
        distinct = sorted({str(v) for v in values})
        kind = self.spec["type"]
        if kind == "interval":
            rows = [_interval_row(v, self.spec["widths"], self.spec.get("start", 0), where) for v in distinct]
        elif kind == "date":
            rows = [_date_row(v, self.spec["levels"], where) for v in distinct]
        else:
            rows = [_prefix_row(v, self.spec["keep"]) for v in distinct]
        if not rows:
            raise input_error(where, "values", "no values to build the hierarchy from", "check the data set")
        return Hierarchy(tuple(rows), where)


def _interval_row(value: str, widths: Sequence[int], start: int, where: str) -> tuple[str, ...]:
    try:
        number = float(value)
    except ValueError:
        raise input_error(
            where, "value", f"'{value}' is not a number", "use an interval spec only on integers"
        ) from None
    if not math.isfinite(number) or number != int(number):
        raise input_error(where, "value", f"'{value}' is not an integer", "round the column or use another spec")
    integer = int(number)
    row = [value]
    for width in widths:
        low = start + ((integer - start) // width) * width
        row.append(f"{low}-{low + width - 1}")
    row.append(SUPPRESSED)
    return tuple(row)


def _date_row(value: str, levels: Sequence[str], where: str) -> tuple[str, ...]:
    try:
        date = _dt.date.fromisoformat(value[:10])
    except ValueError:
        raise input_error(where, "value", f"'{value}' is not a YYYY-MM-DD date", "fix the value or the spec") from None
    labels = {
        "month": f"{date.year:04d}-{date.month:02d}",
        "quarter": f"{date.year:04d}-Q{(date.month - 1) // 3 + 1}",
        "year": f"{date.year:04d}",
        "decade": f"{date.year // 10 * 10:04d}-{date.year // 10 * 10 + 9:04d}",
    }
    return (value, *(labels[level] for level in levels), SUPPRESSED)


def _prefix_row(value: str, keep: Sequence[int]) -> tuple[str, ...]:
    row = [value]
    for kept in keep:
        row.append(value[:kept] + "*" * max(len(value) - kept, 0))
    if row[-1] != SUPPRESSED:
        row.append(SUPPRESSED)
    return tuple(row)
