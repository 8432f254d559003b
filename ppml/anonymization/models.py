"""Privacy models, evaluated for all equivalence classes of a transformation at once.

Each model looks at one class table: class sizes and, for models on a sensitive attribute, the histogram of the
sensitive values in every class (rows = classes, columns = the attribute's codes). A class that violates any
model is suppressed as a whole (ARX's record suppression); a transformation is accepted when the suppressed
records stay within the suppression limit.

Monotonicity (what the search may prune with): merging classes (generalizing) never breaks k-anonymity, distinct,
entropy or recursive (c,l)-diversity, or t-closeness of classes that satisfied it (entropy is concave, the EMD
is convex). With suppression, a merged class can however absorb a violating class: only k-anonymity and
distinct l-diversity stay monotone then (ARX draws the same line). :func:`is_monotone` encodes this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["KAnonymity", "LDiversity", "TCloseness", "is_monotone"]

# Tolerance for the floating-point comparisons of entropy and EMD, so that e.g. exactly l equally frequent values
# satisfy entropy-l-diversity.
EPS = 1e-12


@dataclass(frozen=True)
class KAnonymity:
    """Every equivalence class holds at least k records."""

    k: int

    def violations(self, counts: np.ndarray) -> np.ndarray:
        return counts < self.k

    def describe(self) -> str:
        return f"{self.k}-anonymity"


@dataclass(frozen=True)
class LDiversity:
    """l-diversity of one sensitive attribute: distinct, entropy or recursive (c,l)."""

    attribute: str
    l: float  # noqa: E741 - the model's own name
    variant: Literal["distinct", "entropy", "recursive"] = "distinct"
    c: float | None = None

    def __post_init__(self) -> None:
        if self.l < 1:
            raise ValueError("l must be at least 1")
        if self.variant == "recursive" and (self.c is None or self.c <= 0):
            raise ValueError("recursive (c,l)-diversity needs c > 0")
        if self.variant not in ("distinct", "entropy", "recursive"):
            raise ValueError(f"unknown l-diversity variant {self.variant!r}")

    def violations(self, histogram: np.ndarray) -> np.ndarray:
        """Boolean per class (rows of ``histogram``)."""
        if self.variant == "distinct":
            return (histogram > 0).sum(axis=1) < self.l
        if self.variant == "entropy":
            return entropy_rows(histogram) < math.log(self.l) - EPS
        # recursive (c,l): r1 < c * (r_l + ... + r_m), with r sorted descending; fewer than l values fail.
        ordered = -np.sort(-histogram, axis=1)
        needed = math.ceil(self.l)
        if ordered.shape[1] < needed:
            return np.ones(histogram.shape[0], dtype=bool)
        tail = ordered[:, needed - 1 :].sum(axis=1)
        assert self.c is not None
        return ~((ordered[:, 0] < self.c * tail) & (ordered[:, needed - 1] > 0))

    def monotone_with_suppression(self) -> bool:
        return self.variant == "distinct"

    def describe(self) -> str:
        if self.variant == "recursive":
            return f"recursive ({self.c:g},{self.l:g})-diversity of {self.attribute}"
        return f"{self.variant} {self.l:g}-diversity of {self.attribute}"


@dataclass(frozen=True)
class TCloseness:
    """t-closeness of one sensitive attribute: EMD between a class's and the whole data set's distribution.

    ``equal``: all values are at distance 1 (EMD = total variation distance). ``hierarchical``: the
    hierarchical-distance EMD of Li et al. (2007) over the attribute's generalization hierarchy.
    ``level_maps`` (set by the engine for the hierarchical variant) maps the attribute's codes at level 0 to codes
    at each level 1..h-1.
    """

    attribute: str
    t: float
    variant: Literal["equal", "hierarchical"] = "equal"

    def __post_init__(self) -> None:
        if not 0 < self.t <= 1:
            raise ValueError("t must be in (0, 1]")
        if self.variant not in ("equal", "hierarchical"):
            raise ValueError(f"unknown t-closeness variant {self.variant!r}")

    def describe(self) -> str:
        return f"{self.variant}-distance {self.t:g}-closeness of {self.attribute}"

    def distances(
        self, histogram: np.ndarray, reference: np.ndarray, level_maps: list[np.ndarray] | None = None
    ) -> np.ndarray:
        """EMD of every class (row) to the reference distribution."""
        totals = histogram.sum(axis=1, keepdims=True)
        p = histogram / np.maximum(totals, 1)
        diff = p - reference[None, :]
        if self.variant == "equal":
            return 0.5 * np.abs(diff).sum(axis=1)
        return hierarchical_emd(diff, level_maps or [])

    def violations(
        self, histogram: np.ndarray, reference: np.ndarray, level_maps: list[np.ndarray] | None = None
    ) -> np.ndarray:
        return self.distances(histogram, reference, level_maps) > self.t + EPS


def hierarchical_emd(diff: np.ndarray, level_maps: list[np.ndarray]) -> np.ndarray:
    """Li et al.'s hierarchical-distance EMD for rows of ``p - q`` over leaves.

    ``level_maps[j]`` maps leaf codes to node codes at level j+1. The cost of an internal node at level j is
    ``j / H`` times the mass it must move between its children, min(positive extra, negative extra).
    """
    height = len(level_maps)
    if height == 0:
        return 0.5 * np.abs(diff).sum(axis=1)
    total = np.zeros(diff.shape[0])
    extra_children = diff  # extra of the nodes at the level below (leaves first)
    child_codes = np.arange(diff.shape[1])  # leaf -> its node at the child level
    leaf_to_child = child_codes
    for level, leaf_to_parent in enumerate(level_maps, start=1):
        parents = int(leaf_to_parent.max()) + 1
        # map each child node to its parent: pick any leaf of the child
        child_count = extra_children.shape[1]
        child_parent = np.zeros(child_count, dtype=np.int64)
        child_parent[leaf_to_child] = leaf_to_parent
        positive = np.zeros((diff.shape[0], parents))
        negative = np.zeros((diff.shape[0], parents))
        np.add.at(positive.T, child_parent, np.maximum(extra_children, 0).T)
        np.add.at(negative.T, child_parent, np.maximum(-extra_children, 0).T)
        total += (level / height) * np.minimum(positive, negative).sum(axis=1)
        extra_children = positive - negative
        leaf_to_child = leaf_to_parent
    return total


def entropy_rows(histogram: np.ndarray) -> np.ndarray:
    totals = histogram.sum(axis=1, keepdims=True)
    p = histogram / np.maximum(totals, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1)), 0.0)
    return terms.sum(axis=1)


def is_monotone(l_models: tuple[LDiversity, ...], t_models: tuple[TCloseness, ...], max_outliers: int) -> bool:
    """Whether "accepted within the suppression limit" is monotone over the lattice for these models."""
    if max_outliers == 0:
        return True
    return not t_models and all(model.monotone_with_suppression() for model in l_models)
