"""Independent verification of a released data set against the privacy models (for the blocking asset checks).

This does not reuse the search's encoded class tables: it groups the released table as it will be published
(pandas ``groupby`` on the generalized QI columns) and re-evaluates every model, so a bug in the search cannot
hide a violation. Each rule yields at most one :class:`Violation` that counts the failing classes and records
and shows a few example classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ppml.anonymization.encoding import EncodedAttribute
from ppml.anonymization.engine import AnonymizationConfig
from ppml.anonymization.models import TCloseness, hierarchical_emd

__all__ = ["Violation", "class_statistics", "verify_release"]

EXAMPLES = 5


@dataclass(frozen=True)
class Violation:
    """One broken rule: which, on what, how many classes/records, and a few example classes."""

    rule: str  # "direct_identifier", "missing_quasi_identifier", "k_anonymity", "l_diversity", "t_closeness",
    # "suppression_limit"
    attribute: str | None
    detail: str
    classes: int = 0
    records: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def class_statistics(df: pd.DataFrame, quasi_identifiers: Iterable[str]) -> dict[str, Any]:
    """Equivalence-class statistics of a table, for asset metadata."""
    qis = list(quasi_identifiers)
    if df.empty:
        return {"records": 0, "equivalence_classes": 0, "min_class_size": 0, "max_class_size": 0}
    sizes = df.groupby(qis, dropna=False, sort=False, observed=True).size().to_numpy()
    edges = [1, 2, 5, 10, 20, 50, 100, 1000]
    histogram = {}
    for low, high in zip(edges, [*edges[1:], math.inf], strict=True):
        label = f"{low}-{high - 1}" if high != math.inf else f">={low}"
        if high - low == 1:
            label = str(low)
        histogram[label] = int(((sizes >= low) & (sizes < high)).sum())
    return {
        "records": int(sizes.sum()),
        "equivalence_classes": len(sizes),
        "min_class_size": int(sizes.min()),
        "max_class_size": int(sizes.max()),
        "mean_class_size": float(sizes.mean()),
        "median_class_size": float(np.median(sizes)),
        "class_size_histogram": histogram,
    }


def verify_release(
    df: pd.DataFrame,
    config: AnonymizationConfig,
    *,
    original: pd.DataFrame | None = None,
    original_rows: int | None = None,
    forbidden_columns: Iterable[str] = (),
    handles: Iterable[str] = (),
) -> list[Violation]:
    """Every way ``df`` (a released table) breaks ``config``; an empty list means it passes.

    ``original`` (or just ``original_rows``) is the input before anonymization: it gives the number of records
    for the suppression limit and the reference distribution for t-closeness (ARX uses the input's); without it
    the released table's own distribution is the reference. ``forbidden_columns`` are direct identifiers that
    must not be released. ``handles`` are released columns an attacker could know (the release-safety step's
    extra quasi-identifiers): k, l and t are checked over the QIs plus them.
    """
    violations: list[Violation] = []
    present = [c for c in forbidden_columns if c in df.columns]
    if present:
        violations.append(
            Violation("direct_identifier", ", ".join(present), f"direct identifier column(s) {present} released")
        )
    qis = list(dict.fromkeys([*config.quasi_identifiers, *handles]))
    missing = [q for q in qis if q not in df.columns]
    for name in missing:
        violations.append(Violation("missing_quasi_identifier", name, f"quasi-identifier '{name}' not in release"))
    qis = [q for q in qis if q in df.columns]
    rows_in = original_rows if original_rows is not None else (len(original) if original is not None else None)
    if rows_in is not None:
        violations.extend(_suppression_violations(rows_in, len(df), config))
    if df.empty or not qis:
        return violations
    grouped = df.groupby(qis, dropna=False, sort=False, observed=True)
    class_id = grouped.ngroup().to_numpy()
    classes = _Classes(class_id, np.bincount(class_id), grouped.size().index, qis)  # same order: sort=False
    sizes = classes.sizes
    small = np.flatnonzero(sizes < config.k)
    if small.size:
        violations.append(
            Violation(
                "k_anonymity",
                None,
                f"{small.size} equivalence classes are smaller than k = {config.k} (smallest: {int(sizes.min())})",
                classes=int(small.size),
                records=int(sizes[small].sum()),
                examples=classes.examples(small),
            )
        )
    violations.extend(_l_diversity_violations(df, config, classes))
    violations.extend(_t_closeness_violations(df, config, classes, original))
    return violations


@dataclass(frozen=True)
class _Classes:
    """The released table's equivalence classes: each record's class, the class keys, and their sizes."""

    class_id: np.ndarray
    sizes: np.ndarray
    keys: pd.Index
    qis: list[str]

    def examples(self, indices: np.ndarray) -> list[dict[str, Any]]:
        return _examples(self.keys, self.qis, indices, self.sizes)


def _suppression_violations(rows_in: int, rows_out: int, config: AnonymizationConfig) -> list[Violation]:
    removed = rows_in - rows_out
    allowed = math.floor(config.suppression_limit * rows_in + 1e-9)
    if removed <= allowed:
        return []
    return [
        Violation(
            "suppression_limit",
            None,
            f"{removed} of {rows_in} records removed; the limit of {config.suppression_limit:.2%} allows {allowed}",
            records=removed,
        )
    ]


def _l_diversity_violations(df: pd.DataFrame, config: AnonymizationConfig, classes: _Classes) -> list[Violation]:
    violations = []
    sizes = classes.sizes
    for model in config.l_diversity:
        if model.attribute not in df.columns:
            violations.append(Violation("l_diversity", model.attribute, "sensitive attribute not in release"))
            continue
        histogram, _ = _histogram(df[model.attribute], classes.class_id, len(sizes))
        failing = np.flatnonzero(model.violations(histogram))
        if failing.size:
            violations.append(
                Violation(
                    "l_diversity",
                    model.attribute,
                    f"{failing.size} classes violate {model.describe()}",
                    classes=int(failing.size),
                    records=int(sizes[failing].sum()),
                    examples=classes.examples(failing),
                )
            )
    return violations


def _t_closeness_violations(
    df: pd.DataFrame, config: AnonymizationConfig, classes: _Classes, original: pd.DataFrame | None
) -> list[Violation]:
    violations = []
    sizes = classes.sizes
    for model in config.t_closeness:
        if model.attribute not in df.columns:
            violations.append(Violation("t_closeness", model.attribute, "sensitive attribute not in release"))
            continue
        distances = _t_distances(df, model, config, classes.class_id, len(sizes), original)
        failing = np.flatnonzero(distances > model.t + 1e-12)
        if failing.size:
            violations.append(
                Violation(
                    "t_closeness",
                    model.attribute,
                    f"{failing.size} classes violate {model.describe()} (largest distance {distances.max():.4f})",
                    classes=int(failing.size),
                    records=int(sizes[failing].sum()),
                    examples=classes.examples(failing),
                )
            )
    return violations


def _examples(keys: pd.Index, qis: list[str], indices: np.ndarray, sizes: np.ndarray) -> list[dict[str, Any]]:
    examples = []
    for index in indices[:EXAMPLES]:
        key = keys[int(index)]
        values = key if isinstance(key, tuple) else (key,)
        example = {q: (None if pd.isna(v) else str(v)) for q, v in zip(qis, values, strict=True)}
        example["size"] = int(sizes[int(index)])
        examples.append(example)
    return examples


def _histogram(column: pd.Series, class_id: np.ndarray, classes: int) -> tuple[np.ndarray, pd.Index]:
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    width = max(len(uniques), 1)
    flat = np.bincount(class_id * width + codes, minlength=classes * width)
    return flat.reshape(classes, width), pd.Index(uniques)


def _t_distances(
    df: pd.DataFrame,
    model: TCloseness,
    config: AnonymizationConfig,
    class_id: np.ndarray,
    classes: int,
    original: pd.DataFrame | None,
) -> np.ndarray:
    reference_column = original[model.attribute] if original is not None else df[model.attribute]
    if model.variant == "hierarchical":
        encoded = EncodedAttribute.build(model.attribute, config.sensitive_hierarchies[model.attribute])
        width = encoded.cardinality(0)

        def leaf(column: pd.Series) -> np.ndarray:
            return np.array([encoded.lookup[str(v)] for v in column], dtype=np.int64)

        histogram = np.bincount(class_id * width + leaf(df[model.attribute]), minlength=classes * width)
        histogram = histogram.reshape(classes, width)
        reference = np.bincount(leaf(reference_column), minlength=width) / len(reference_column)
        p = histogram / np.maximum(histogram.sum(axis=1, keepdims=True), 1)
        level_maps = [encoded.leaf_to_level[level] for level in range(1, encoded.height)]
        return hierarchical_emd(p - reference[None, :], level_maps)
    histogram, values = _histogram(df[model.attribute], class_id, classes)
    counts = reference_column.value_counts(dropna=False)
    reference = np.array([counts.get(v, 0) for v in values], dtype=float) / len(reference_column)
    p = histogram / np.maximum(histogram.sum(axis=1, keepdims=True), 1)
    # values of the reference that the release no longer holds still count: all their mass is missing
    absent = 1.0 - reference.sum()
    return 0.5 * (np.abs(p - reference[None, :]).sum(axis=1) + absent)


def exhaustive_optimum(df: pd.DataFrame, config: AnonymizationConfig) -> float:
    """The best quality over *every* transformation of the lattice that satisfies the models.

    The independent reference for the optimal search (tests and the benchmark's "exhaustive" column); it checks
    all nodes, so use it only on lattices small enough to enumerate.
    """
    from ppml.anonymization.engine import build_problem
    from ppml.anonymization.lattice import _TableCache, all_nodes
    from ppml.anonymization.metrics import make_metric

    problem = build_problem(df, config).problem
    metric = make_metric(config.metric, problem)
    cache = _TableCache(problem)
    best = math.inf
    for levels in all_nodes(problem.heights):
        table = cache.get(levels)
        assessment = problem.assess(table)
        if assessment.accepted:
            best = min(best, metric.value(table, assessment.suppressed))
    return best
