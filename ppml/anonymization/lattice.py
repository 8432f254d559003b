"""The generalization lattice, class tables with roll-up, and the optimal and heuristic searches.

A *node* (transformation) assigns a generalization level to every quasi-identifier. Its equivalence classes are
held in a *class table*: the distinct generalized QI tuples with their record counts and, per sensitive attribute,
the histogram of sensitive values. A node's table is computed from the table of any cached node below it (the
roll-up ARX also uses): map each column to the higher level and group equal tuples by a mixed-radix key in a hash
table (_kernels.py). Near the top of the lattice these tables have tens of rows.

Optimal search (``optimal_search``): after a marginal pre-filter (records whose generalized value alone violates
k or distinct l are suppressed by every node using that level) and its pairwise version for k (records whose
generalized pair of values has fewer than k records), nodes are visited in increasing order of the
quality metric's lower bound (the information loss ignoring suppression, monotone over the lattice). The first
node whose bound reaches the best value found so far ends the search: no later node can be better. Which nodes are
accepted is decided with the privacy models' monotonicity, in the spirit of ARX's Flash (Kohlmayer et al. 2012):
for an unknown node, a path to the top of the lattice is binary-searched for the boundary between rejected and
accepted nodes; a rejected node rejects everything below it and (for monotone models) an accepted node accepts
everything above it, so most of the lattice is classified without computing its classes. Once few nodes are left
open (``DIRECT_OPEN``), a node is checked directly instead of climbing from it. With a suppression
limit the metric is not monotone, so every accepted node whose bound is below the best value is evaluated exactly.

Heuristic search (``heuristic_search``, for lattices above ``max_optimal_nodes``): two greedy climbs, local search
and a budgeted best-first search; see its docstring and docs/anonymization.md. Its report says whether it could
prove the result optimal.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ppml.anonymization._kernels import kernels
from ppml.anonymization.encoding import EncodedAttribute
from ppml.anonymization.models import KAnonymity, LDiversity, TCloseness, is_monotone

__all__ = ["Assessment", "ClassTable", "Problem", "SearchOutcome", "heuristic_search", "optimal_search"]

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
        self._group, self._sum_rows, self._pair_histograms = kernels(
            float(self.base.size) * self.lattice_size * checks_per_node
        )

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
            self._leaf_counts = [
                np.bincount(self.base.codes[i], weights=self.base.counts, minlength=attribute.cardinality(0))
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
        histograms = self._pair_histograms(
            np.ascontiguousarray(source.codes), np.ascontiguousarray(source.counts), first, second, widths, starts
        )
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


def _floor(marginal: list[np.ndarray], max_outliers: int) -> np.ndarray | None:
    """Lowest level per attribute whose values alone do not force more suppression than allowed (None: none)."""
    floor = []
    for per_level in marginal:
        allowed = np.flatnonzero(per_level <= max_outliers)
        if allowed.size == 0:
            return None
        floor.append(int(allowed[0]))
    return np.array(floor, dtype=np.int64)


def all_nodes(heights: list[int]) -> np.ndarray:
    """Every node of the lattice, row-major (the flat index is ``np.ravel_multi_index``)."""
    return np.indices(heights).reshape(len(heights), -1).T.astype(np.int64)


def optimal_search(problem: Problem, metric) -> SearchOutcome:
    """Find the accepted node with the lowest metric value (ties: lower lattice level, then lexicographic)."""
    heights = problem.heights
    d = len(heights)
    nodes = all_nodes(heights)
    total = len(nodes)
    monotone = is_monotone(problem.l_models, problem.t_models, problem.max_outliers)
    metric_monotone = problem.max_outliers == 0  # no suppression: generalizing never improves any metric
    extend_rejections = monotone and problem.max_outliers == 0
    # monotone-part status: 1 holds, -1 fails (propagated down), 0 unknown; shaped like the lattice
    mono = np.zeros(total, dtype=np.int8)
    mono_view = mono.reshape(heights)
    # Pre-filters: nodes with an attribute level (or a pair of levels) whose values alone force more suppression
    # than allowed are rejected without computing their classes.
    forced = np.zeros(heights, dtype=bool)
    marginal = problem.marginal_suppression()
    level_rejected = [per_level > problem.max_outliers for per_level in marginal]
    for i, rejected in enumerate(level_rejected):
        shape = [1] * d
        shape[i] = heights[i]
        forced |= rejected.reshape(shape)
    floor = _floor(marginal, problem.max_outliers)
    floor_table = problem.base
    if floor is not None and floor.any():
        floor_table = problem.rollup(problem.base, floor)
    if floor is not None:
        for i, j, grid in problem.pair_suppression(floor_table):
            rejected = grid > problem.max_outliers
            if not (rejected & ~level_rejected[i][:, None] & ~level_rejected[j][None, :]).any():
                continue  # nothing beyond what single attributes reject
            shape = [1] * d
            shape[i], shape[j] = heights[i], heights[j]
            forced |= rejected.reshape(shape)
    mono[forced.reshape(-1)] = -1
    # Only nodes the pre-filters left open are ever visited: order just those by (bound, lattice level, index).
    candidates = np.flatnonzero(mono != -1)
    candidate_nodes = nodes[candidates]
    height_sum = candidate_nodes.sum(axis=1)
    candidate_bounds = metric.lower_bounds(candidate_nodes)
    if candidate_bounds is None:
        bounds = None
        order = candidates[np.lexsort((height_sum,))]
    else:
        bounds = np.full(total, math.inf)
        bounds[candidates] = candidate_bounds
        order = candidates[np.lexsort((height_sum, candidate_bounds))]
    # full status: 1 accepted, -1 rejected, 2 dominated (cannot be better than an accepted node below it)
    full = np.zeros(total, dtype=np.int8)
    full_view = full.reshape(heights)
    full[mono == -1] = -1
    top_list = [h - 1 for h in heights]
    strides = [math.prod(heights[i + 1 :]) for i in range(d)]
    cache = _TableCache(problem, metric.class_bound)
    values: dict[int, float] = {}
    best_index, best_value = -1, math.inf

    if floor_table is not problem.base:
        cache.add_source(floor_table)
    if len(order):
        # The first nodes in bound order are checked first, from the smallest cached table below them; when the
        # pre-filters leave only high nodes open, the table of their meet is much smaller than the floor's.
        meet = nodes[order[:MEET_OF_FIRST]].min(axis=0)
        if (meet != floor_table.levels).any():
            cache.add_source(problem.rollup(floor_table, meet))
    down_slices = [slice(0, level + 1) for level in range(max(heights))]
    up_slices = [slice(level, None) for level in range(max(heights))]

    def down(levels: np.ndarray) -> tuple[slice, ...]:
        return tuple([down_slices[x] for x in levels.tolist()])

    def up(levels: np.ndarray) -> tuple[slice, ...]:
        return tuple([up_slices[x] for x in levels.tolist()])

    def evaluate(index: int) -> bool:
        """Compute the node's classes; record statuses and, when accepted, its value."""
        levels = nodes[index]
        table = cache.get(levels)
        assessment = problem.assess(table)
        holds = assessment.accepted if monotone else assessment.monotone_ok
        if not holds:
            mono_view[down(levels)] = -1
            full_view[down(levels)] = -1
            return False
        region = mono_view[up(levels)]
        region[region == 0] = 1
        if not assessment.accepted:
            full[index] = -1
            return False
        full[index] = 1
        if monotone:
            region = full_view[up(levels)]
            region[region == 0] = 1
        if bounds is not None and metric.exact_without_suppression and assessment.suppressed_records == 0:
            values[index] = metric.value_without_suppression(levels)
        else:
            values[index] = metric.value(table, assessment.suppressed)
        return True

    def climb(index: int) -> None:
        """Binary search for the rejected/accepted boundary on a path from the node to the top."""
        levels = [int(x) for x in nodes[index]]
        flat = int(index)
        path = [flat]
        # Head first for the nearest cached node with a small class table: path nodes above it roll up cheaply.
        target = top_list
        used = len(cache.tables)
        small = cache.sizes[:used] <= JOIN_TABLE_SIZE
        if small.any():
            joins = np.maximum(cache.levels[:used][small], nodes[index])
            target = joins[int(np.argmin(joins.sum(axis=1)))].tolist()
        while True:
            step = -1
            for i in range(d):
                if levels[i] < target[i] and (step < 0 or levels[i] * top_list[step] <= levels[step] * top_list[i]):
                    step = i
            if step < 0:
                if target is not top_list:
                    target = top_list
                    continue
                break
            levels[step] += 1
            flat += strides[step]
            path.append(flat)
        lo, hi = 0, len(path) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            node = path[mid]
            state = mono[node]
            if state == 0:
                if monotone:
                    evaluate(node)
                else:
                    assessment = problem.assess(cache.get(nodes[node]), full=False)
                    if assessment.monotone_ok:
                        region = mono_view[up(nodes[node])]
                        region[region == 0] = 1
                    else:
                        mono_view[down(nodes[node])] = -1
                        full_view[down(nodes[node])] = -1
                state = mono[node]
            if state == 1:
                hi = mid - 1
            else:
                lo = mid + 1
        if extend_rejections and lo > 0:
            # Without suppression the rejected region is large: grow the highest rejected node on the path to a
            # maximal rejected node (each step a cheap roll-up from it), so that one down-set covers more.
            current = nodes[path[lo - 1]]
            flat = path[lo - 1]
            moved = True
            while moved:
                moved = False
                for i in range(d):
                    if current[i] < top_list[i]:
                        successor = flat + strides[i]
                        if mono[successor] == 0:
                            evaluate(successor)
                        if mono[successor] == -1:
                            current, flat, moved = nodes[successor], successor, True
                            break

    position = 0
    few_open = False
    while position < len(order):
        chunk = order[position : position + 512]
        open_mask = (mono[chunk] != -1) & (full[chunk] != -1) & (full[chunk] != 2)
        hits = np.flatnonzero(open_mask)
        if hits.size == 0:
            position += len(chunk)
            continue
        position += int(hits[0])
        index = int(order[position])
        position += 1
        if bounds is not None and bounds[index] >= best_value:
            break
        if metric.class_bound is not None and best_index >= 0 and cache.dominated(nodes[index], best_value):
            full[index] = 2
            continue
        # While many nodes are open, a climb classifies large regions with few checks; once the pre-filters or
        # earlier checks have left few (Adult without suppression: under 200 of 12,960), checking the node itself
        # is cheaper than probing a path above it, most of whose nodes are accepted and tell nothing new. Open
        # nodes only ever become fewer, so they are no longer counted once few.
        if mono[index] == 0 and not few_open:
            few_open = np.count_nonzero(mono == 0) <= DIRECT_OPEN
        if mono[index] == 0 and not few_open:
            climb(index)
            if mono[index] == -1:
                continue
        if (full[index] == 0 or (full[index] == 1 and index not in values)) and not evaluate(index):
            continue
        if full[index] != 1:
            continue
        value = values[index]
        if value < best_value:
            best_index, best_value = index, value
        if metric_monotone and bounds is None:
            region = full_view[up(nodes[index])]
            region[region != -1] = 2
            full[index] = 1
    if best_index < 0:
        return SearchOutcome(None, math.inf, len(cache.requested), False, total)
    levels = tuple(int(x) for x in nodes[best_index])
    return SearchOutcome(levels, best_value, len(cache.requested), False, total, cache.cached(levels))


def heuristic_search(problem: Problem, metric, check_budget: int = HEURISTIC_CHECKS) -> SearchOutcome:
    """Greedy climbs, local search, then a budgeted best-first search; for lattices too large to enumerate.

    Phase 1 climbs from the floor to an accepted node twice: at each step to the accepted successor with the lowest
    value or else, once, to the successor with the fewest violating records and, once, to the successor with the
    lowest lower bound. Phase 2 improves it locally: lower one attribute, or
    lower one and raise another, while the models hold and the value drops. Phase 3 (in the spirit of ARX's
    Lightning) expands the lattice lazily from the floor in lower-bound order, pruned by the best value so far,
    for at most ``check_budget`` transformations; if it runs out of nodes that could be better, the result is
    proven optimal and reported as such, otherwise it is labelled heuristic.
    """
    heights = problem.heights
    top = np.array(heights, dtype=np.int64) - 1
    cache = _TableCache(problem)
    floor = _floor(problem.marginal_suppression(), problem.max_outliers)
    if floor is None:  # some attribute forces too much suppression even fully generalized
        return SearchOutcome(None, math.inf, 0, True, problem.lattice_size)

    def score(candidate: np.ndarray) -> tuple[bool, int, float]:
        table = cache.get(candidate)
        assessment = problem.assess(table)
        if not assessment.monotone_ok:
            # rank by the records violating the monotone part; full models are checked once it holds
            return False, assessment.suppressed_records, math.inf
        value = metric.value(table, assessment.suppressed) if assessment.accepted else math.inf
        return assessment.accepted, assessment.suppressed_records, value

    def climb_and_improve(by_bound: bool) -> tuple[np.ndarray | None, float]:
        """Phase 1: climb from the floor to an accepted node; phase 2: improve it by local moves."""
        levels = floor
        accepted, _, value = score(levels)
        while not accepted and not (levels >= top).all():
            options = []
            for i in np.flatnonzero(levels < top):
                candidate = levels.copy()
                candidate[i] += 1
                ok, suppressed, candidate_value = score(candidate)
                rank = metric.bound(candidate) if by_bound else float(suppressed if not ok else 0)
                options.append((not ok, rank, candidate_value, int(i), candidate))
            options.sort(key=lambda o: (o[0], o[1], o[2], o[3]))
            _, _, value, _, levels = options[0]
            accepted = not options[0][0]
        if not accepted:
            return None, math.inf
        d = len(heights)
        improved = True
        while improved:
            improved = False
            moves = [(i, -1) for i in range(d)] + [(i, j) for i in range(d) for j in range(d) if i != j]
            for lower, raise_ in moves:
                candidate = levels.copy()
                candidate[lower] -= 1
                if raise_ >= 0:
                    candidate[raise_] += 1
                if (candidate < floor).any() or (candidate > top).any():
                    continue
                ok, _, candidate_value = score(candidate)
                if ok and candidate_value < value:
                    levels, value, improved = candidate, candidate_value, True
                    break
        return levels, value

    best_levels, best_value = climb_and_improve(by_bound=False)
    other_levels, other_value = climb_and_improve(by_bound=True)
    if other_value < best_value:
        best_levels, best_value = other_levels, other_value

    # Phase 3: best-first expansion from the floor in lower-bound order, pruned by the best value so far; when it
    # runs out of nodes that could be better, the result is proven optimal.
    dominated_above = problem.max_outliers == 0  # without suppression no successor of an accepted node is better
    heap: list[tuple[float, int, tuple[int, ...]]] = []
    start = tuple(int(x) for x in floor)
    seen = {start}
    heapq.heappush(heap, (metric.bound(floor), int(floor.sum()), start))
    budget = len(cache.requested) + check_budget
    completed = False
    while len(cache.requested) < budget:
        if not heap or heap[0][0] >= best_value:
            completed = True
            break
        _, _, key = heapq.heappop(heap)
        candidate = np.array(key, dtype=np.int64)
        ok, _, candidate_value = score(candidate)
        if ok and candidate_value < best_value:
            best_levels, best_value = candidate, candidate_value
        if ok and dominated_above:
            continue
        for i in np.flatnonzero(candidate < top):
            successor = candidate.copy()
            successor[i] += 1
            successor_key = tuple(int(x) for x in successor)
            if successor_key not in seen:
                seen.add(successor_key)
                heapq.heappush(heap, (metric.bound(successor), int(successor.sum()), successor_key))
    levels_out = None if best_levels is None else tuple(int(x) for x in best_levels)
    return SearchOutcome(
        levels_out, best_value, len(cache.requested), not completed, problem.lattice_size, cache.cached(levels_out)
    )
