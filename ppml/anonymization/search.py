"""The optimal and heuristic searches over the generalization lattice (:mod:`ppml.anonymization.lattice`).

Optimal search (:func:`optimal_search`): after a marginal pre-filter (records whose generalized value alone violates
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

Heuristic search (:func:`heuristic_search`, for lattices above ``max_optimal_nodes``): two greedy climbs, local
search and a budgeted best-first search; see its docstring and docs/anonymization.md. Its report says whether it
could prove the result optimal.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from ppml.anonymization.lattice import (
    DIRECT_OPEN,
    HEURISTIC_CHECKS,
    JOIN_TABLE_SIZE,
    MEET_OF_FIRST,
    ClassTable,
    Problem,
    SearchOutcome,
    _TableCache,
    all_nodes,
)
from ppml.anonymization.models import is_monotone


def _floor(marginal: list[np.ndarray], max_outliers: int) -> np.ndarray | None:
    """Lowest level per attribute whose values alone do not force more suppression than allowed (None: none)."""
    floor = []
    for per_level in marginal:
        allowed = np.flatnonzero(per_level <= max_outliers)
        if allowed.size == 0:
            return None
        floor.append(int(allowed[0]))
    return np.array(floor, dtype=np.int64)


# --------------------------------------------------------------------------------------------------- optimal


def optimal_search(problem: Problem, metric) -> SearchOutcome:
    """Find the accepted node with the lowest metric value (ties: lower lattice level, then lexicographic)."""
    return _OptimalSearch(problem, metric).run()


class _OptimalSearch:
    """One optimal search: node statuses shaped like the lattice, the class-table cache and the accepted values.

    ``mono`` is the monotone part's status (1 holds, -1 fails, propagated down; 0 unknown), ``full`` the full
    status (1 accepted, -1 rejected, 2 dominated: cannot be better than an accepted node below it).
    """

    def __init__(self, problem: Problem, metric) -> None:
        heights = problem.heights
        self.problem, self.metric, self.heights, self.d = problem, metric, heights, len(heights)
        self.nodes = all_nodes(heights)
        self.total = len(self.nodes)
        self.monotone = is_monotone(problem.l_models, problem.t_models, problem.max_outliers)
        self.metric_monotone = problem.max_outliers == 0  # no suppression: generalizing never improves any metric
        self.extend_rejections = self.monotone and problem.max_outliers == 0
        self.mono = np.zeros(self.total, dtype=np.int8)
        self.mono_view = self.mono.reshape(heights)
        floor_table = self._prefilter()
        self.order, self.bounds = self._visit_order()
        self.full = np.zeros(self.total, dtype=np.int8)
        self.full_view = self.full.reshape(heights)
        self.full[self.mono == -1] = -1
        self.top_list = [h - 1 for h in heights]
        self.strides = [math.prod(heights[i + 1 :]) for i in range(self.d)]
        self.cache = _TableCache(problem, metric.class_bound)
        self.values: dict[int, float] = {}
        self._seed_cache(floor_table)
        self.down_slices = [slice(0, level + 1) for level in range(max(heights))]
        self.up_slices = [slice(level, None) for level in range(max(heights))]

    def _prefilter(self) -> ClassTable:
        """Reject, without computing their classes, the nodes with an attribute level (or a pair of levels) whose
        values alone force more suppression than allowed; returns the floor's table to roll up from.

        The nodes left open are filtered attribute by attribute and pair by pair (each filter looks only at the
        nodes still open, fewer and fewer), rather than marking each filter's rejections on the whole lattice:
        that was a quarter of the search's set-up on Adult (issue 15)."""
        problem, nodes = self.problem, self.nodes
        marginal = problem.marginal_suppression()
        level_rejected = [per_level > problem.max_outliers for per_level in marginal]
        open_nodes = np.arange(self.total)
        for i, rejected in enumerate(level_rejected):
            if rejected.any():
                open_nodes = open_nodes[~rejected[nodes[open_nodes, i]]]
        floor = _floor(marginal, problem.max_outliers)
        floor_table = problem.base
        if floor is not None and floor.any():
            floor_table = problem.rollup(problem.base, floor)
        if floor is not None:
            for i, j, grid in problem.pair_suppression(floor_table):
                rejected = grid > problem.max_outliers
                if not (rejected & ~level_rejected[i][:, None] & ~level_rejected[j][None, :]).any():
                    continue  # nothing beyond what single attributes reject
                open_nodes = open_nodes[~rejected[nodes[open_nodes, i], nodes[open_nodes, j]]]
        self.mono.fill(-1)
        self.mono[open_nodes] = 0
        return floor_table

    def _visit_order(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Only nodes the pre-filters left open are ever visited: just those, by (bound, lattice level, index)."""
        candidates = np.flatnonzero(self.mono != -1)
        candidate_nodes = self.nodes[candidates]
        height_sum = candidate_nodes.sum(axis=1)
        candidate_bounds = self.metric.lower_bounds(candidate_nodes)
        if candidate_bounds is None:
            return candidates[np.lexsort((height_sum,))], None
        bounds = np.full(self.total, math.inf)
        bounds[candidates] = candidate_bounds
        return candidates[np.lexsort((height_sum, candidate_bounds))], bounds

    def _seed_cache(self, floor_table: ClassTable) -> None:
        """The first nodes in bound order are checked first, from the smallest cached table below them; when the
        pre-filters leave only high nodes open, the table of their meet is much smaller than the floor's."""
        if floor_table is not self.problem.base:
            self.cache.add_source(floor_table)
        if len(self.order):
            meet = self.nodes[self.order[:MEET_OF_FIRST]].min(axis=0)
            if (meet != floor_table.levels).any():
                self.cache.add_source(self.problem.rollup(floor_table, meet))

    def down(self, levels: np.ndarray) -> tuple[slice, ...]:
        return tuple([self.down_slices[x] for x in levels.tolist()])

    def up(self, levels: np.ndarray) -> tuple[slice, ...]:
        return tuple([self.up_slices[x] for x in levels.tolist()])

    def _reject_below(self, levels: np.ndarray) -> None:
        self.mono_view[self.down(levels)] = -1
        self.full_view[self.down(levels)] = -1

    def _monotone_holds_above(self, levels: np.ndarray) -> None:
        region = self.mono_view[self.up(levels)]
        region[region == 0] = 1

    def evaluate(self, index: int) -> bool:
        """Compute the node's classes; record statuses and, when accepted, its value."""
        levels = self.nodes[index]
        table = self.cache.get(levels)
        assessment = self.problem.assess(table)
        holds = assessment.accepted if self.monotone else assessment.monotone_ok
        if not holds:
            self._reject_below(levels)
            return False
        self._monotone_holds_above(levels)
        if not assessment.accepted:
            self.full[index] = -1
            return False
        self.full[index] = 1
        if self.monotone:
            region = self.full_view[self.up(levels)]
            region[region == 0] = 1
        metric = self.metric
        if self.bounds is not None and metric.exact_without_suppression and assessment.suppressed_records == 0:
            self.values[index] = metric.value_without_suppression(levels)
        else:
            self.values[index] = metric.value(table, assessment.suppressed)
        return True

    def climb(self, index: int) -> None:
        """Binary search for the rejected/accepted boundary on a path from the node to the top."""
        path = self._path_to_top(index)
        lo = self._bisect(path)
        if self.extend_rejections and lo > 0:
            self._extend_rejection(path[lo - 1])

    def _path_to_top(self, index: int) -> list[int]:
        """Flat indices of a path from the node to the top, heading first for the nearest cached node with a small
        class table: path nodes above it roll up cheaply."""
        nodes, cache, top_list, strides, d = self.nodes, self.cache, self.top_list, self.strides, self.d
        levels = [int(x) for x in nodes[index]]
        flat = int(index)
        path = [flat]
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
        return path

    def _bisect(self, path: list[int]) -> int:
        """The position of the lowest path node where the monotone part holds (statuses recorded on the way)."""
        mono, nodes = self.mono, self.nodes
        lo, hi = 0, len(path) - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            node = path[mid]
            state = mono[node]
            if state == 0:
                if self.monotone:
                    self.evaluate(node)
                else:
                    assessment = self.problem.assess(self.cache.get(nodes[node]), full=False)
                    if assessment.monotone_ok:
                        self._monotone_holds_above(nodes[node])
                    else:
                        self._reject_below(nodes[node])
                state = mono[node]
            if state == 1:
                hi = mid - 1
            else:
                lo = mid + 1
        return lo

    def _extend_rejection(self, flat: int) -> None:
        """Without suppression the rejected region is large: grow the highest rejected node on the path to a
        maximal rejected node (each step a cheap roll-up from it), so that one down-set covers more."""
        mono, nodes, top_list, strides = self.mono, self.nodes, self.top_list, self.strides
        current = nodes[flat]
        moved = True
        while moved:
            moved = False
            for i in range(self.d):
                if current[i] < top_list[i]:
                    successor = flat + strides[i]
                    if mono[successor] == 0:
                        self.evaluate(successor)
                    if mono[successor] == -1:
                        current, flat, moved = nodes[successor], successor, True
                        break

    def run(self) -> SearchOutcome:
        """Visit the open nodes in bound order until no later node can beat the best accepted value."""
        order, mono, full, values, nodes = self.order, self.mono, self.full, self.values, self.nodes
        bounds, metric, cache = self.bounds, self.metric, self.cache
        best_index, best_value = -1, math.inf
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
            # earlier checks have left few (Adult without suppression: under 200 of 12,960), checking the node
            # itself is cheaper than probing a path above it, most of whose nodes are accepted and tell nothing
            # new. Open nodes only ever become fewer, so they are no longer counted once few.
            if mono[index] == 0 and not few_open:
                few_open = np.count_nonzero(mono == 0) <= DIRECT_OPEN
            if mono[index] == 0 and not few_open:
                self.climb(index)
                if mono[index] == -1:
                    continue
            if (full[index] == 0 or (full[index] == 1 and index not in values)) and not self.evaluate(index):
                continue
            if full[index] != 1:
                continue
            value = values[index]
            if value < best_value:
                best_index, best_value = index, value
            if self.metric_monotone and bounds is None:
                region = self.full_view[self.up(nodes[index])]
                region[region != -1] = 2
                full[index] = 1
        if best_index < 0:
            return SearchOutcome(None, math.inf, len(cache.requested), False, self.total)
        levels = tuple(int(x) for x in nodes[best_index])
        return SearchOutcome(levels, best_value, len(cache.requested), False, self.total, cache.cached(levels))


# ------------------------------------------------------------------------------------------------- heuristic


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
    top = np.array(problem.heights, dtype=np.int64) - 1
    cache = _TableCache(problem)
    floor = _floor(problem.marginal_suppression(), problem.max_outliers)
    if floor is None:  # some attribute forces too much suppression even fully generalized
        return SearchOutcome(None, math.inf, 0, True, problem.lattice_size)
    score = _Scorer(problem, metric, cache)
    best_levels, best_value = _improve(score, *_climb(score, metric, floor, top, by_bound=False), floor, top)
    other_levels, other_value = _improve(score, *_climb(score, metric, floor, top, by_bound=True), floor, top)
    if other_value < best_value:
        best_levels, best_value = other_levels, other_value
    best_levels, best_value, completed = _best_first(
        score, metric, cache, floor, top, (best_levels, best_value), check_budget, problem.max_outliers == 0
    )
    levels_out = None if best_levels is None else tuple(int(x) for x in best_levels)
    return SearchOutcome(
        levels_out, best_value, len(cache.requested), not completed, problem.lattice_size, cache.cached(levels_out)
    )


class _Scorer:
    """A node's (accepted, violating records, value), from the cache's class tables."""

    def __init__(self, problem: Problem, metric, cache: _TableCache) -> None:
        self.problem, self.metric, self.cache = problem, metric, cache

    def __call__(self, candidate: np.ndarray) -> tuple[bool, int, float]:
        table = self.cache.get(candidate)
        assessment = self.problem.assess(table)
        if not assessment.monotone_ok:
            # rank by the records violating the monotone part; full models are checked once it holds
            return False, assessment.suppressed_records, math.inf
        value = self.metric.value(table, assessment.suppressed) if assessment.accepted else math.inf
        return assessment.accepted, assessment.suppressed_records, value


def _climb(
    score: _Scorer, metric, floor: np.ndarray, top: np.ndarray, *, by_bound: bool
) -> tuple[np.ndarray | None, float]:
    """Phase 1: climb from the floor to an accepted node (None when even the top is rejected)."""
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
    return levels, value


def _improve(
    score: _Scorer, levels: np.ndarray | None, value: float, floor: np.ndarray, top: np.ndarray
) -> tuple[np.ndarray | None, float]:
    """Phase 2: lower one attribute, or lower one and raise another, while the models hold and the value drops."""
    if levels is None:
        return None, math.inf
    d = len(top)
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


def _best_first(
    score: _Scorer,
    metric,
    cache: _TableCache,
    floor: np.ndarray,
    top: np.ndarray,
    best: tuple[np.ndarray | None, float],
    check_budget: int,
    dominated_above: bool,
) -> tuple[np.ndarray | None, float, bool]:
    """Phase 3: best-first expansion from the floor in lower-bound order, pruned by the best value so far; when it
    runs out of nodes that could be better, the result is proven optimal (the returned flag). With
    ``dominated_above`` (no suppression) no successor of an accepted node is better, so none is expanded."""
    best_levels, best_value = best
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
    return best_levels, best_value, completed
