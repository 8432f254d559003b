"""The generalization lattice and class tables with roll-up (the searches over it: :mod:`ppml.anonymization.search`).

A *node* (transformation) assigns a generalization level to every quasi-identifier. Its equivalence classes are
held in a *class table*: the distinct generalized QI tuples with their record counts and, per sensitive attribute,
the histogram of sensitive values. A node's table is computed from the table of any cached node below it (the
roll-up ARX also uses): map each column to the higher level and group equal tuples by a mixed-radix key in a hash
table (_kernels.py). Near the top of the lattice these tables have tens of rows.

The optimal and heuristic searches over the lattice are in :mod:`ppml.anonymization.search`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppml.anonymization._kernels import kernels, pair_grids_kernel
from ppml.anonymization.encoding import EncodedAttribute
from ppml.anonymization.models import KAnonymity, LDiversity, TCloseness

__all__ = ["Assessment", "ClassTable", "Problem", "SearchOutcome"]

CACHE_CELLS = 40_000_000  # upper bound on cached class-table cells (about 320 MB of int64)
HEURISTIC_CHECKS = 300  # transformations the heuristic's best-first phase may check before giving up on a proof
JOIN_TABLE_SIZE = 5_000  # climbs head for cached nodes whose class table is at most this large
#: below this many nodes of unknown status, a node is checked directly instead of climbing from it (see search)
DIRECT_OPEN = 200
#: the meet of this many first nodes in bound order is rolled up once as a source for the checks
MEET_OF_FIRST = 32
_NEVER = np.iinfo(np.int64).max  # size of an evicted cache slot: never chosen as a source


@dataclass
class ClassTable:
    """Equivalence classes of one node: distinct generalized tuples, their sizes, sensitive histograms."""

    levels: np.ndarray  # (d,)
    codes: np.ndarray  # (d, c): one column per class, codes at the node's levels
    counts: np.ndarray  # (c,) int64
    hists: list[np.ndarray]  # per sensitive attribute, (c, |S|) int64

    @property
    def size(self) -> int:
        return int(self.counts.shape[0])

    @property
    def cells(self) -> int:
        return self.size * (self.codes.shape[0] + 1 + sum(h.shape[1] for h in self.hists))


@dataclass
class Assessment:
    accepted: bool  # all models hold within the suppression limit
    monotone_ok: bool  # the monotone part (k, distinct-l) holds within the limit
    suppressed: np.ndarray  # (c,) bool: classes removed
    suppressed_records: int


@dataclass
class SearchOutcome:
    levels: tuple[int, ...] | None
    value: float
    checked: int
    heuristic: bool
    lattice_size: int
    table: ClassTable | None = None  # the result's class table when the search still holds it


@dataclass
class Problem:
    """Everything the search needs, encoded: attributes, the base class table, models, limits."""

    attributes: list[EncodedAttribute]
    base: ClassTable
    n: int
    max_outliers: int
    k_model: KAnonymity
    l_models: tuple[LDiversity, ...]
    t_models: tuple[TCloseness, ...]
    sensitive_names: list[str]  # column of ``hists`` per sensitive attribute
    t_references: list[np.ndarray] = field(default_factory=list)  # per t model: reference distribution
    t_level_maps: list[list[np.ndarray] | None] = field(default_factory=list)

    @property
    def heights(self) -> list[int]:
        return [a.height for a in self.attributes]

    @property
    def lattice_size(self) -> int:
        return math.prod(self.heights)

    # ---------------------------------------------------------------------------------------------------------
    def rollup(self, source: ClassTable, levels: np.ndarray) -> ClassTable:
        """Class table of ``levels`` from a table of a node at or below it."""
        return self.rollup_with_index(source, levels)[0]

    def choose_kernels(self, checks_per_node: float = 1.0) -> None:
        """Compiled or numpy roll-up, by the expected work (searches without a separable bound check more)."""
        work = float(self.base.size) * self.lattice_size * checks_per_node
        self._group, self._sum_rows, self._pair_histograms = kernels(work)
        self._pair_grids = pair_grids_kernel(work)

    def __post_init__(self) -> None:
        self.choose_kernels()
        # All level-to-level maps in one array, so the compiled roll-up can take them as one argument.
        chunks, position = [], 0
        self._offsets: list[list[list[int]]] = []
        for attribute in self.attributes:
            per_attribute = []
            for a in range(attribute.height):
                row = []
                for b in range(attribute.height):
                    mapping = attribute.up[a][b] if b >= a else None
                    if mapping is None:
                        row.append(-1)
                        continue
                    row.append(position)
                    chunks.append(mapping)
                    position += len(mapping)
                per_attribute.append(row)
            self._offsets.append(per_attribute)
        self._maps = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(1, dtype=np.int64)
        d = len(self.attributes)
        tallest = max((a.height for a in self.attributes), default=1)
        self._offset_table = np.full((d, tallest, tallest), -1, dtype=np.int64)
        self._card_table = np.ones((d, tallest), dtype=np.int64)
        for i, attribute in enumerate(self.attributes):
            for a in range(attribute.height):
                self._card_table[i, a] = attribute.cardinality(a)
                for b in range(a + 1, attribute.height):
                    self._offset_table[i, a, b] = self._offsets[i][a][b]
        self._log_cards = np.log2(np.maximum(self._card_table, 2))
        self._rows = np.arange(d)
        self._leaf_counts: list[np.ndarray] | None = None

    def leaf_counts(self) -> list[np.ndarray]:
        """Per attribute: records per level-0 code (float64), shared by the pre-filter and the metrics."""
        if self._leaf_counts is None:
            # the roll-up's row sum: compiled, it is several times faster than a weighted bincount (the same sums)
            counts = self.base.counts.reshape(-1, 1)
            self._leaf_counts = [
                self._sum_rows(counts, self.base.codes[i], attribute.cardinality(0))[:, 0].astype(np.float64)
                for i, attribute in enumerate(self.attributes)
            ]
        return self._leaf_counts

    def rollup_with_index(self, source: ClassTable, levels: np.ndarray) -> tuple[ClassTable, np.ndarray | None]:
        """Class table of ``levels`` and, per source class, the index of its new class (None: unchanged)."""
        d = len(self.attributes)
        levels = np.array(levels, dtype=np.int64)
        offsets = self._offset_table[self._rows, source.levels, levels]
        cards = self._card_table[self._rows, levels]
        if (offsets < 0).all():
            return ClassTable(levels, source.codes, source.counts, source.hists), None
        if self._log_cards[self._rows, levels].sum() < 62:
            source_cards = self._card_table[self._rows, source.levels]
            inverse, codes, counts = self._group(source.codes, self._maps, offsets, cards, source.counts, source_cards)
        else:  # too many combinations for one integer key: number the distinct tuples instead
            columns = np.stack(
                [source.codes[i] if offsets[i] < 0 else self._maps[offsets[i] + source.codes[i]] for i in range(d)]
            )
            _, first, inverse = np.unique(columns, axis=1, return_index=True, return_inverse=True)
            inverse = inverse.reshape(-1)
            codes = np.ascontiguousarray(columns[:, first])
            counts = np.bincount(inverse, weights=source.counts, minlength=codes.shape[1]).astype(np.int64)
        groups = len(counts)
        hists = [self._sum_rows(h, inverse, groups) for h in source.hists]
        return ClassTable(levels, codes, counts, hists), inverse

    def marginal_suppression(self) -> list[np.ndarray]:
        """Per attribute and level: records that every node with that level must suppress.

        A class never holds more records (or more distinct sensitive values) than the attribute value it has, so
        records whose generalized value alone violates k-anonymity or distinct l-diversity are suppressed by
        every node using that level. This rejects many nodes before any class is computed.
        """
        distinct = [m for m in self.l_models if m.monotone_with_suppression()]
        result = []
        for i, attribute in enumerate(self.attributes):
            leaf_counts = self.leaf_counts()[i]
            leaf_hists = []
            for model in distinct:
                hist = self.base.hists[self.sensitive_names.index(model.attribute)]
                leaf_hists.append(self._sum_rows(hist, self.base.codes[i], attribute.cardinality(0)))
            per_level = np.zeros(attribute.height, dtype=np.int64)
            for level in range(attribute.height):
                mapping = attribute.leaf_to_level[level]
                width = attribute.cardinality(level)
                counts = np.bincount(mapping, weights=leaf_counts, minlength=width)
                bad = counts < self.k_model.k
                for model, leaf_hist in zip(distinct, leaf_hists, strict=True):
                    bad |= model.violations(self._sum_rows(leaf_hist, mapping, width))
                per_level[level] = int(counts[bad].sum())
            result.append(per_level)
        return result

    def pair_suppression(self, source: ClassTable) -> list[tuple[int, int, np.ndarray]]:
        """Per pair of attributes and pair of levels: records that every node with those levels must suppress.

        The two-attribute version of :meth:`marginal_suppression`, for k-anonymity (part of every configuration):
        a class never holds more records than its pair of values, so records whose generalized pair has fewer than
        k records are suppressed by every node with those two levels. On Adult at k=5 without suppression this
        rejects all but about a hundred of the 12,960 nodes without computing any class table, where single
        attributes reject half. ``source`` is a table at or below every node of interest (the floor); levels below
        it get 0. Returns ``(i, j, counts)`` with ``counts`` of shape (h_i, h_j); pairs whose dense histogram would
        be large are skipped (the filter is only an accelerator).
        """
        k = self.k_model.k
        if k <= 1:
            return []
        d = len(self.attributes)
        limit = max(4 * source.size, 4096)
        groups = [a.level_groups(int(level)) for a, level in zip(self.attributes, source.levels, strict=True)]
        cards = [a.cardinality(int(level)) for a, level in zip(self.attributes, source.levels, strict=True)]
        pairs = [(i, j) for i in range(d) for j in range(i + 1, d) if (cards[i] + 1) * (cards[j] + 1) <= limit]
        if not pairs:
            return []
        first = np.array([i for i, _ in pairs], dtype=np.int64)
        second = np.array([j for _, j in pairs], dtype=np.int64)
        widths = np.array([cards[j] for _, j in pairs], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum([cards[i] * cards[j] for i, j in pairs])]).astype(np.int64)
        codes, counts = np.ascontiguousarray(source.codes), np.ascontiguousarray(source.counts)
        if self._pair_grids is not None:  # compiled: all pairs' grids in one call
            heights = np.array(self.heights, dtype=np.int64)
            flat = self._pair_grids(
                codes,
                counts,
                first,
                second,
                widths,
                starts,
                source.levels.astype(np.int64),
                heights,
                self._card_table,
                self._offset_table,
                self._maps,
                int(k),
            )
            sizes = [int(heights[i] * heights[j]) for i, j in pairs]
            ends = np.cumsum(sizes)
            return [
                (i, j, flat[end - size : end].reshape(int(heights[i]), int(heights[j])))
                for (i, j), size, end in zip(pairs, sizes, ends.tolist(), strict=True)
            ]
        histograms = self._pair_histograms(codes, counts, first, second, widths, starts)
        result = []
        for p, (i, j) in enumerate(pairs):
            gi, gj = groups[i], groups[j]
            dense = np.zeros((cards[i] + 1, cards[j] + 1), dtype=np.int64)
            dense[: cards[i], : cards[j]] = histograms[starts[p] : starts[p + 1]].reshape(cards[i], cards[j])
            cells = np.add.reduceat(np.add.reduceat(dense, gi[0], axis=0), gj[0], axis=1)
            small = np.where(cells < k, cells, 0)
            forced = np.add.reduceat(np.add.reduceat(small, gi[1], axis=0), gj[1], axis=1)
            grid = np.zeros((self.attributes[i].height, self.attributes[j].height), dtype=np.int64)
            grid[int(source.levels[i]) :, int(source.levels[j]) :] = forced
            result.append((i, j, grid))
        return result

    def assess(self, table: ClassTable, full: bool = True) -> Assessment:
        """Which classes violate the models, and whether the node is accepted within the suppression limit."""
        counts = table.counts
        bad = self.k_model.violations(counts)
        for model in self.l_models:
            if model.monotone_with_suppression():
                bad |= model.violations(table.hists[self.sensitive_names.index(model.attribute)])
        suppressed = int(counts[bad].sum())
        monotone_ok = suppressed <= self.max_outliers
        if not monotone_ok or not full:
            return Assessment(False, monotone_ok, bad, suppressed)
        extra = False
        for model in self.l_models:
            if not model.monotone_with_suppression():
                bad |= model.violations(table.hists[self.sensitive_names.index(model.attribute)])
                extra = True
        for j, model in enumerate(self.t_models):
            histogram = table.hists[self.sensitive_names.index(model.attribute)]
            bad |= model.violations(histogram, self.t_references[j], self.t_level_maps[j])
            extra = True
        if extra:
            suppressed = int(counts[bad].sum())
        return Assessment(suppressed <= self.max_outliers, monotone_ok, bad, suppressed)


class _TableCache:
    """Class tables of evaluated nodes; a new node rolls up from the smallest cached table below it."""

    def __init__(self, problem: Problem, class_bound: Callable[[ClassTable], float] | None = None) -> None:
        self.problem = problem
        self.class_bound = class_bound  # a bound valid for every node above a computed one (see metrics.py)
        d = len(problem.attributes)
        self.levels = np.zeros((64, d), dtype=np.int64)
        self.sizes = np.zeros(64, dtype=np.int64)
        self.bounds = np.full(64, -math.inf)
        self.tables: list[ClassTable | None] = []
        self.index: dict[bytes, int] = {}
        self.cells = 0
        self.computed = 0
        self.requested: set[bytes] = set()
        self._add(problem.base)

    def _add(self, table: ClassTable) -> None:
        slot = len(self.tables)
        if slot == len(self.sizes):
            self.levels = np.concatenate([self.levels, np.zeros_like(self.levels)])
            self.sizes = np.concatenate([self.sizes, np.zeros_like(self.sizes)])
            self.bounds = np.concatenate([self.bounds, np.full_like(self.bounds, -math.inf)])
        self.levels[slot] = table.levels
        self.sizes[slot] = table.size
        if self.class_bound is not None:
            self.bounds[slot] = self.class_bound(table)
        self.tables.append(table)
        self.index[table.levels.tobytes()] = slot
        self.cells += table.cells
        if self.cells > CACHE_CELLS:
            self._evict()

    def _evict(self) -> None:
        order = np.argsort(-self.sizes[: len(self.tables)])
        for slot in order:
            if self.cells <= CACHE_CELLS // 2:
                break
            table = self.tables[slot]
            if slot == 0 or table is None:
                continue
            self.cells -= table.cells
            self.tables[slot] = None
            self.sizes[slot] = _NEVER
            del self.index[table.levels.tobytes()]

    def dominated(self, levels: np.ndarray, best: float) -> bool:
        """Whether a computed node below ``levels`` already bounds its value at ``best`` or more."""
        used = len(self.tables)
        candidates = self.bounds[:used] >= best
        return bool(candidates.any() and np.all(self.levels[:used][candidates] <= levels, axis=1).any())

    def add_source(self, table: ClassTable) -> None:
        """Cache a table to roll up from without counting it as a checked transformation."""
        if table.levels.tobytes() not in self.index:
            self._add(table)

    def cached(self, levels: tuple[int, ...] | None) -> ClassTable | None:
        """The table of a node if it is still cached (the engine reuses the result's table)."""
        if levels is None:
            return None
        slot = self.index.get(np.array(levels, dtype=np.int64).tobytes())
        return None if slot is None else self.tables[slot]

    def get(self, levels: np.ndarray) -> ClassTable:
        key = levels.tobytes()
        self.requested.add(key)
        slot = self.index.get(key)
        if slot is not None:
            table = self.tables[slot]
            assert table is not None
            return table
        used = len(self.tables)
        below = np.all(self.levels[:used] <= levels, axis=1)
        candidates = np.where(below, self.sizes[:used], _NEVER)
        source = self.tables[int(np.argmin(candidates))]
        assert source is not None
        table = self.problem.rollup(source, levels)
        self.computed += 1
        self._add(table)
        return table


def all_nodes(heights: list[int]) -> np.ndarray:
    """Every node of the lattice, row-major (the flat index is ``np.ravel_multi_index``); read-only.

    It depends only on the heights, so small lattices' arrays are kept (:data:`NODES_CACHE_CELLS`): building one
    was a tenth of a millisecond of every search on Adult (issue 15: fixed per-call work)."""
    key = tuple(int(h) for h in heights)
    nodes = _NODES.get(key)
    if nodes is None:
        nodes = np.indices(key).reshape(len(key), -1).T.astype(np.int64)
        nodes.setflags(write=False)
        if nodes.size <= NODES_CACHE_CELLS:
            with _NODES_LOCK:
                _NODES[key] = nodes
                while len(_NODES) > NODES_CACHE_SIZE:
                    _NODES.pop(next(iter(_NODES)))
    return nodes


#: lattices of at most this many cells (nodes x attributes: 8 MB) have their node array cached, up to
#: NODES_CACHE_SIZE of them (oldest dropped first)
NODES_CACHE_CELLS = 1_000_000
NODES_CACHE_SIZE = 4
_NODES: dict[tuple[int, ...], np.ndarray] = {}
_NODES_LOCK = threading.Lock()


def __getattr__(name: str) -> Any:
    """The searches moved to :mod:`ppml.anonymization.search`; still importable from here for this session's other
    branches (lazily: that module imports this one)."""
    if name in ("heuristic_search", "optimal_search"):
        from ppml.anonymization import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
