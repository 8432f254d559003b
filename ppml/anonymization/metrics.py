"""Quality (information-loss) models, computed from a class table the way ARX 3.9 computes them.

All metrics are "lower is better". ``lower_bounds`` returns, for every node of the lattice at once, a bound that
ignores suppression; it is monotone over the lattice and never exceeds the metric's value, which is what lets the
optimal search stop early (ARX's bound-based pruning). Loss and non-uniform entropy have such bounds that are
separable per attribute and therefore free to compute; discernibility and AECS do not (they need the classes).

Definitions (n = records of the input, suppressed records included):

- ``loss`` (ARX's default "Loss"): for attribute i, ``L_i`` = sum over records of the share of the hierarchy's
  rows that the record's generalized value covers (a suppressed record costs 1); normalized
  ``v_i = (L_i - n/|dom_i|) / (n - n/|dom_i|)`` clipped at 0 and truncated to 10 decimals as ARX does;
  aggregated with the geometric mean ``prod(1 + v_i)^(1/d) - 1``.
- ``entropy`` (ARX's non-monotone non-uniform entropy): per attribute, the sum over all records of
  ``log2(freq(generalized value) / freq(original value))`` with input frequencies, plus, for the suppressed
  records S, ``sum_v c_v log2(|S| / c_v)`` over their generalized values v (they collapse into one group);
  truncated to 10 decimals per attribute and summed over attributes (ARX's default aggregate for entropy).
- ``discernibility``: sum of squared class sizes; a suppressed record costs n.
- ``aecs`` (average equivalence class size): n / (classes kept + 1 if any record is suppressed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from ppml.anonymization.lattice import ClassTable, Problem

MetricName = Literal["loss", "discernibility", "entropy", "aecs"]
METRICS: tuple[str, ...] = ("loss", "discernibility", "entropy", "aecs")

__all__ = ["METRICS", "MetricName", "QualityMetric", "make_metric"]


class QualityMetric:
    """Base class: value of a transformation from its class table and the mask of suppressed classes."""

    name: str = ""
    #: the lower bound equals the value when no record is suppressed
    exact_without_suppression: bool = False
    #: for metrics without a separable bound: a bound from one node's classes that holds for every node above it
    class_bound: Callable[[ClassTable], float] | None = None

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def lower_bounds(self, nodes: np.ndarray) -> np.ndarray | None:
        return None

    def bound(self, levels: np.ndarray) -> float:
        """Lower bound of one node (the heuristic's priority); 0 where the metric has none (breadth first)."""
        return 0.0

    def value(self, table: ClassTable, suppressed: np.ndarray) -> float:
        raise NotImplementedError


class LossMetric(QualityMetric):
    name = "loss"
    exact_without_suppression = True

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        n = problem.n
        # Integer numerators: sum over records of count * (rows covered), per attribute and level.
        self.covered = []
        for i, attribute in enumerate(problem.attributes):
            leaf_counts = problem.leaf_counts()[i]
            per_level = []
            for level in range(attribute.height):
                shares = attribute.share_counts[level][attribute.leaf_to_level[level]]
                per_level.append(int(np.dot(leaf_counts.astype(np.int64), shares)))
            self.covered.append(per_level)
        self.domain = [float(a.hierarchy.domain_size) for a in problem.attributes]
        self.n = float(n)
        # normalized loss per attribute and level when nothing is suppressed (the separable lower bound)
        self.unsuppressed = [
            [self._normalize_scalar(c / self.domain[i], i) for c in self.covered[i]]
            for i in range(len(problem.attributes))
        ]

    def _normalize_scalar(self, raw: float, i: int) -> float:
        minimum = self.n / self.domain[i]
        result = (raw - minimum) / (self.n - minimum) if self.n > minimum else 0.0
        result = result if result >= 0.0 else 0.0
        return math.floor(result * 1e10) / 1e10

    def _normalize(self, raw: np.ndarray, i: int) -> np.ndarray:
        minimum = self.n / self.domain[i]
        result = (raw - minimum) / (self.n - minimum) if self.n > minimum else np.zeros_like(raw)
        result = np.where(result >= 0.0, result, 0.0)
        return np.floor(result * 1e10) / 1e10

    def aggregate(self, normalized: list[np.ndarray]) -> np.ndarray:
        d = len(normalized)
        result = np.ones_like(normalized[0])
        for values in normalized:
            result = result * np.power(values + 1.0, 1.0 / d)
        return result - 1.0

    def per_attribute(self, levels: np.ndarray, table: ClassTable | None, suppressed: np.ndarray | None) -> list[float]:
        values = []
        for i, attribute in enumerate(self.problem.attributes):
            level = int(levels[i])
            numerator = self.covered[i][level]
            outliers = 0
            if table is not None and suppressed is not None and suppressed.any():
                counts = table.counts[suppressed]
                numerator -= int(np.dot(counts, attribute.share_counts[level][table.codes[i][suppressed]]))
                outliers = int(counts.sum())
            values.append(self._normalize_scalar(numerator / self.domain[i] + outliers, i))
        return values

    def lower_bounds(self, nodes: np.ndarray) -> np.ndarray:
        normalized = []
        for i in range(len(self.problem.attributes)):
            per_level = np.array([c / self.domain[i] for c in self.covered[i]])
            normalized.append(self._normalize(per_level, i)[nodes[:, i]])
        return self.aggregate(normalized)

    def value(self, table: ClassTable, suppressed: np.ndarray) -> float:
        return self.scalar(self.per_attribute(table.levels, table, suppressed))

    def value_without_suppression(self, levels: np.ndarray) -> float:
        return self.scalar([self.unsuppressed[i][level] for i, level in enumerate(levels.tolist())])

    def bound(self, levels: np.ndarray) -> float:
        return self.value_without_suppression(levels)

    @staticmethod
    def scalar(values: list[float]) -> float:
        """ARX's geometric-mean aggregate, in ARX's order of operations (bit-for-bit on the references)."""
        result = 1.0
        for value in values:
            result *= math.pow(value + 1.0, 1.0 / len(values))
        return result - 1.0


class EntropyMetric(QualityMetric):
    """ARX's non-monotone non-uniform entropy (``MetricMDNUNMEntropy``), summed over attributes."""

    name = "entropy"
    exact_without_suppression = True

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        self.level_cost = []  # per attribute, per level: bits summed over all records (ARX's "raw" entropy)
        for i, attribute in enumerate(problem.attributes):
            leaf = problem.leaf_counts()[i]
            costs = []
            present = leaf > 0
            for level in range(attribute.height):
                mapping = attribute.leaf_to_level[level]
                freq = np.bincount(mapping, weights=leaf, minlength=attribute.cardinality(level))
                costs.append(float(np.sum(leaf[present] * np.log2(freq[mapping[present]] / leaf[present]))))
            self.level_cost.append(costs)
        self.rounded = [[_truncate(c) for c in costs] for costs in self.level_cost]

    def lower_bounds(self, nodes: np.ndarray) -> np.ndarray:
        total = np.zeros(len(nodes))
        for i in range(len(self.problem.attributes)):
            total = total + np.array(self.rounded[i])[nodes[:, i]]
        return total

    def value_without_suppression(self, levels: np.ndarray) -> float:
        return float(sum(self.rounded[i][int(level)] for i, level in enumerate(levels)))

    def bound(self, levels: np.ndarray) -> float:
        return self.value_without_suppression(levels)

    def value(self, table: ClassTable, suppressed: np.ndarray) -> float:
        total = 0.0
        outliers = float(table.counts[suppressed].sum()) if suppressed.any() else 0.0
        for i in range(len(self.problem.attributes)):
            cost = self.level_cost[i][int(table.levels[i])]
            if outliers:
                # suppressed records collapse into one group: sum over their generalized values v of c_v log2(S/c_v)
                per_value = np.bincount(table.codes[i][suppressed], weights=table.counts[suppressed])
                per_value = per_value[per_value > 0]
                cost += float(np.sum(per_value * np.log2(outliers / per_value)))
            total += _truncate(cost)
        return total


def _truncate(value: float) -> float:
    """ARX's ``Metric.round``: keep 10 decimals, rounding down."""
    return math.floor(value * 1e10) / 1e10


class DiscernibilityMetric(QualityMetric):
    name = "discernibility"

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        # DM >= sum of squared class sizes (a suppressed record costs n >= its class size), which only grows
        # when classes merge: a bound for every node above.
        self.class_bound = lambda table: float(np.dot(table.counts, table.counts))

    def value(self, table: ClassTable, suppressed: np.ndarray) -> float:
        counts = table.counts.astype(np.float64)
        kept = counts[~suppressed]
        return float(np.dot(kept, kept) + counts[suppressed].sum() * self.problem.n)


class AECSMetric(QualityMetric):
    name = "aecs"

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem)
        # AECS >= n / (classes + 1) and generalizing never adds classes: a bound for every node above.
        self.class_bound = lambda table: problem.n / (table.size + 1)

    def value(self, table: ClassTable, suppressed: np.ndarray) -> float:
        classes = int((~suppressed).sum()) + (1 if suppressed.any() else 0)
        return self.problem.n / classes if classes else math.inf


def make_metric(name: str, problem: Problem) -> QualityMetric:
    metric = {"loss": LossMetric, "entropy": EntropyMetric, "discernibility": DiscernibilityMetric, "aecs": AECSMetric}
    return metric[name](problem)
