"""The anonymization engine: configuration, problem encoding, search, release and report.

``anonymize(df, config)`` is what the CLI and the Dagster asset call. It never returns a dataset weaker than the
configuration asks for: when no transformation satisfies the privacy models within the suppression limit it
raises :class:`ppml.errors.PPMLError` instead.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ppml.anonymization._kernels import kernels
from ppml.anonymization.encoding import EncodedAttribute, encode_column
from ppml.anonymization.hierarchy import Hierarchy, HierarchySpec
from ppml.anonymization.lattice import ClassTable, Problem
from ppml.anonymization.metrics import METRICS, make_metric
from ppml.anonymization.models import KAnonymity, LDiversity, TCloseness
from ppml.anonymization.risk import RiskProfile, risk_from_sizes
from ppml.anonymization.search import heuristic_search, optimal_search
from ppml.anonymization.stability import prefer_previous
from ppml.errors import PPMLError, input_error

#: pandas' default string dtype ("str"), resolved once: resolving the name walks pandas' dtype registry, which cost
#: about 0.1 ms per generalized column of every release (issue 15: fixed per-call overhead)
_STR_DTYPE = pd.array([""], dtype="str").dtype

__all__ = ["AnonymizationConfig", "AnonymizationResult", "anonymize"]

MAX_HISTOGRAM_CELLS = 60_000_000


@dataclass(frozen=True)
class AnonymizationConfig:
    """What to anonymize and which guarantees must hold.

    ``quasi_identifiers`` is ordered: transformations are reported in this order. Hierarchical t-closeness needs
    the sensitive attribute's hierarchy in ``sensitive_hierarchies``. Lattices larger than
    ``max_optimal_nodes`` (ARX: 100,000) are searched with the documented greedy heuristic.
    """

    quasi_identifiers: Mapping[str, Hierarchy | HierarchySpec]
    k: int = 2
    l_diversity: tuple[LDiversity, ...] = ()
    t_closeness: tuple[TCloseness, ...] = ()
    suppression_limit: float = 0.0
    metric: str = "loss"
    sensitive_hierarchies: Mapping[str, Hierarchy] = field(default_factory=dict)
    max_optimal_nodes: int = 100_000
    heuristic_checks: int = 300
    risk_threshold: float = 0.2
    source: str = "data"
    #: the previous release's levels per QI (a retrain keeps them while valid; ppml.anonymization.stability)
    previous_transformation: Mapping[str, int] | None = None
    #: how much more information (relative) the kept previous transformation may lose than the new optimum
    previous_tolerance: float = 0.0

    @property
    def sensitive_attributes(self) -> list[str]:
        names: list[str] = []
        for model in [*self.l_diversity, *self.t_closeness]:
            if model.attribute not in names:
                names.append(model.attribute)
        return names

    def describe_models(self) -> list[str]:
        return [KAnonymity(self.k).describe(), *(m.describe() for m in [*self.l_diversity, *self.t_closeness])]


@dataclass
class AnonymizationResult:
    """The released data and the evidence an auditor compares with ARX."""

    data: pd.DataFrame
    transformation: dict[str, int]
    quality: dict[str, Any]
    suppressed_records: int
    equivalence_classes: int
    min_class_size: int
    transformations_checked: int
    seconds: float
    risk_before: RiskProfile
    risk_after: RiskProfile
    optimal: bool
    lattice_size: int
    records_in: int
    models: list[str]
    suppression_limit: float
    max_suppressed_records: int
    class_sizes: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: per QI with a hierarchy file, every label of its released level: a public category set for dp_summary
    public_categories: dict[str, list[str]] = field(repr=False, default_factory=dict)
    #: per input record, whether it is released (False = suppressed); the release keeps the input's row order
    kept_rows: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, dtype=bool))
    #: whether the previous release's transformation was kept, and why (None: no previous one was given)
    stability: dict[str, Any] | None = None

    @property
    def transformation_levels(self) -> list[int]:
        return list(self.transformation.values())

    def to_report(self) -> dict[str, Any]:
        """JSON-serialisable report (the CLI's OUT.json and the asset's metadata)."""
        sizes = self.class_sizes
        return {
            "transformation": dict(self.transformation),
            "quality": dict(self.quality),
            "suppressed_records": self.suppressed_records,
            "records_in": self.records_in,
            "records_out": len(self.data),
            "suppression_limit": self.suppression_limit,
            "max_suppressed_records": self.max_suppressed_records,
            "equivalence_classes": self.equivalence_classes,
            "min_class_size": self.min_class_size,
            "max_class_size": int(sizes.max()) if sizes.size else 0,
            "mean_class_size": float(sizes.mean()) if sizes.size else 0.0,
            "privacy_models": list(self.models),
            "search": "optimal" if self.optimal else "heuristic (greedy; not guaranteed optimal)",
            "optimal": self.optimal,
            "lattice_size": self.lattice_size,
            "transformations_checked": self.transformations_checked,
            "seconds": self.seconds,
            "risk_before": self.risk_before.to_dict(),
            "risk_after": self.risk_after.to_dict(),
            "stability": self.stability,
        }


# ------------------------------------------------------------------------------------------------------------
def _check_config(df: pd.DataFrame, config: AnonymizationConfig) -> None:
    source = config.source
    columns = [str(c) for c in df.columns]
    if not config.quasi_identifiers:
        raise input_error(source, "quasi_identifiers", "no quasi-identifier given", "name at least one QI column")
    for name in config.quasi_identifiers:
        if name not in df.columns:
            raise input_error(
                source, name, f"quasi-identifier not in the data (columns: {columns})", "correct the column name"
            )
    for name in config.sensitive_attributes:
        if name not in df.columns:
            raise input_error(
                source, name, f"sensitive attribute not in the data (columns: {columns})", "correct the column name"
            )
        if name in config.quasi_identifiers:
            raise input_error(
                source, name, "is both a quasi-identifier and a sensitive attribute", "list it in only one role"
            )
    if len(df) == 0:
        raise input_error(source, "(rows)", "the data set is empty", "pass a data set with records")
    if not isinstance(config.k, int | np.integer) or config.k < 1:
        raise input_error(source, "k", f"k must be a positive integer, got {config.k!r}", "use k >= 2")
    if config.k > len(df):
        raise input_error(
            source,
            "k",
            f"k = {config.k} is larger than the number of rows ({len(df)})",
            "lower k or anonymize a larger data set",
        )
    if not 0 <= config.suppression_limit < 1:
        raise input_error(
            source, "suppression_limit", f"{config.suppression_limit} is not in [0, 1)", "e.g. 0.05 for 5%"
        )
    if config.metric not in METRICS:
        raise input_error(source, "metric", f"unknown metric {config.metric!r}", f"use one of {list(METRICS)}")
    for model in config.t_closeness:
        if model.variant == "hierarchical" and model.attribute not in config.sensitive_hierarchies:
            raise input_error(
                source,
                model.attribute,
                "hierarchical t-closeness needs the attribute's hierarchy",
                "pass it in sensitive_hierarchies (CLI: --hierarchy NAME=FILE or DIR/NAME.csv)",
            )


def _resolve(df: pd.DataFrame, config: AnonymizationConfig) -> list[EncodedAttribute]:
    attributes = []
    for name, hierarchy in config.quasi_identifiers.items():
        if isinstance(hierarchy, HierarchySpec):
            hierarchy = hierarchy.build(df[name].dropna().unique(), name)
        if not isinstance(hierarchy, Hierarchy):
            raise input_error(config.source, name, "has no hierarchy", "pass a Hierarchy or HierarchySpec")
        attributes.append(EncodedAttribute.build(name, hierarchy))
    return attributes


@dataclass
class _Encoded:
    problem: Problem
    row_to_base: np.ndarray  # (n,) index of each record's base class
    row_codes: np.ndarray  # (d, n) level-0 codes of every record


def build_problem(df: pd.DataFrame, config: AnonymizationConfig) -> _Encoded:
    """Encode the data set and models into a :class:`Problem` (exposed for tests and the benchmark)."""
    _check_config(df, config)
    attributes = _resolve(df, config)
    n = len(df)
    d = len(attributes)
    row_codes = np.empty((d, n), dtype=np.int64)
    for i, attribute in enumerate(attributes):
        encode_column(df[attribute.name], attribute, config.source, out=row_codes[i])
    cards = np.array([a.cardinality(0) for a in attributes], dtype=np.int64)
    if sum(math.log2(max(int(c), 2)) for c in cards) < 62:
        # group the records by their level-0 tuple with the roll-up's hash grouping
        group_rollup = kernels(
            float(min(n, math.prod(int(c) for c in cards))) * math.prod(a.height for a in attributes)
        )[0]
        inverse, base_codes, counts = group_rollup(
            np.ascontiguousarray(row_codes),
            np.zeros(1, dtype=np.int64),
            np.full(d, -1, np.int64),
            cards,
            np.ones(n, np.int64),
            cards,
        )
    else:
        unique_rows, inverse, counts = np.unique(row_codes.T, axis=0, return_inverse=True, return_counts=True)
        base_codes = unique_rows.T.copy()
    inverse = inverse.reshape(-1)
    m = len(counts)
    sensitive = config.sensitive_attributes
    hists: list[np.ndarray] = []
    sensitive_codes: dict[str, tuple[np.ndarray, int]] = {}
    for name in sensitive:
        hierarchy = config.sensitive_hierarchies.get(name)
        if hierarchy is not None:
            encoded = EncodedAttribute.build(name, hierarchy)
            codes = encode_column(df[name], encoded, config.source)
            width = encoded.cardinality(0)
        else:
            codes, uniques = pd.factorize(df[name], use_na_sentinel=False)
            width = max(len(uniques), 1)
        if m * width > MAX_HISTOGRAM_CELLS:
            raise input_error(
                config.source,
                name,
                f"{width} distinct sensitive values x {m} distinct QI tuples exceed the engine's histogram limit",
                "generalize the sensitive attribute (e.g. bin it) before anonymizing",
            )
        hist = np.bincount(inverse * width + codes, minlength=m * width).reshape(m, width).astype(np.int64)
        hists.append(hist)
        sensitive_codes[name] = (codes, width)
    base = ClassTable(np.zeros(d, dtype=np.int64), base_codes.astype(np.int64), counts.astype(np.int64), hists)
    references, level_maps = [], []
    for model in config.t_closeness:
        codes, width = sensitive_codes[model.attribute]
        references.append(np.bincount(codes, minlength=width) / n)
        if model.variant == "hierarchical":
            encoded = EncodedAttribute.build(model.attribute, config.sensitive_hierarchies[model.attribute])
            level_maps.append([encoded.leaf_to_level[level] for level in range(1, encoded.height)])
        else:
            level_maps.append(None)
    problem = Problem(
        attributes=attributes,
        base=base,
        n=n,
        max_outliers=math.floor(config.suppression_limit * n + 1e-9),
        k_model=KAnonymity(int(config.k)),
        l_models=tuple(config.l_diversity),
        t_models=tuple(config.t_closeness),
        sensitive_names=sensitive,
        t_references=references,
        t_level_maps=level_maps,
    )
    return _Encoded(problem, inverse, row_codes)


def classify(problem: Problem, levels: np.ndarray) -> tuple[ClassTable, np.ndarray]:
    """The node's class table and, for every base class, the index of its class."""
    table, inverse = problem.rollup_with_index(problem.base, np.asarray(levels, dtype=np.int64))
    return table, (np.arange(problem.base.size) if inverse is None else inverse)


def anonymize(df: pd.DataFrame, config: AnonymizationConfig) -> AnonymizationResult:
    """Generalize and suppress ``df`` so that every privacy model holds, with minimal information loss."""
    started = time.perf_counter()
    encoded = build_problem(df, config)
    problem = encoded.problem
    metric = make_metric(config.metric, problem)
    if metric.class_bound is not None:  # no separable bound: the search checks many more transformations
        problem.choose_kernels(checks_per_node=10.0)
    optimal = problem.lattice_size <= config.max_optimal_nodes
    outcome = optimal_search(problem, metric) if optimal else heuristic_search(problem, metric, config.heuristic_checks)
    outcome, stability = prefer_previous(
        problem, metric, outcome, config.previous_transformation, config.previous_tolerance
    )
    if outcome.levels is None:
        top = np.array(problem.heights, dtype=np.int64) - 1
        worst = problem.assess(problem.rollup(problem.base, top))
        searched = (
            "the heuristic search (lattice too large for the optimal search) found" if outcome.heuristic else "there is"
        )
        raise PPMLError(
            f"{config.source}: field 'privacy': {searched} no transformation that satisfies "
            f"{', '.join(config.describe_models())} within the suppression limit of {config.suppression_limit:.2%} "
            f"({problem.max_outliers} records); full generalization would suppress {worst.suppressed_records} of "
            f"{problem.n} records; fix: raise the suppression limit, relax the privacy models, or use coarser "
            "hierarchies"
        )
    levels = np.array(outcome.levels, dtype=np.int64)
    # The search's table of the result serves when nothing is suppressed (every record is kept); otherwise the
    # records' classes are needed, from a roll-up of the base table.
    class_of_base: np.ndarray | None = None
    if outcome.table is not None and problem.assess(outcome.table).suppressed_records == 0:
        table = outcome.table
    else:
        table, class_of_base = classify(problem, levels)
    assessment = problem.assess(table)
    if not assessment.accepted:  # defensive: the release must never be weaker than the configuration
        raise PPMLError(
            f"{config.source}: field 'privacy': transformation {outcome.levels} failed its re-check "
            f"({assessment.suppressed_records} records would be suppressed); fix: report this engine bug"
        )
    keep_class = ~assessment.suppressed
    if class_of_base is None:
        keep_rows = np.ones(problem.n, dtype=bool)
    else:
        keep_rows = keep_class[class_of_base[encoded.row_to_base]]
    released = _release(df, encoded, levels, keep_rows)
    kept_sizes = table.counts[keep_class]
    quality: dict[str, Any] = {"metric": config.metric, "value": float(outcome.value)}
    if config.metric == "loss":
        per_attribute = metric.per_attribute(levels, table, assessment.suppressed)  # type: ignore[attr-defined]
        quality["per_attribute"] = {a.name: v for a, v in zip(problem.attributes, per_attribute, strict=True)}
    return AnonymizationResult(
        data=released,
        transformation={a.name: int(level) for a, level in zip(problem.attributes, levels, strict=True)},
        quality=quality,
        suppressed_records=int(assessment.suppressed_records),
        equivalence_classes=int(keep_class.sum()),
        min_class_size=int(kept_sizes.min()) if kept_sizes.size else 0,
        transformations_checked=outcome.checked,
        seconds=time.perf_counter() - started,
        risk_before=risk_from_sizes(problem.base.counts, config.risk_threshold),
        risk_after=risk_from_sizes(kept_sizes, config.risk_threshold),
        optimal=not outcome.heuristic,
        lattice_size=problem.lattice_size,
        records_in=problem.n,
        models=config.describe_models(),
        suppression_limit=config.suppression_limit,
        max_suppressed_records=problem.max_outliers,
        class_sizes=kept_sizes,
        public_categories={
            a.name: [str(label) for label in a.labels[int(level)]]
            for a, level in zip(problem.attributes, levels, strict=True)
            if isinstance(config.quasi_identifiers[a.name], Hierarchy)
        },
        kept_rows=keep_rows,
        stability=stability,
    )


def _release(df: pd.DataFrame, encoded: _Encoded, levels: np.ndarray, keep_rows: np.ndarray) -> pd.DataFrame:
    """Generalized copy of ``df`` without the suppressed records; other columns and level-0 QIs untouched.

    Generalized columns hold the hierarchy's labels as strings (pandas ``str`` dtype, built with one Arrow take).
    """
    everything = bool(keep_rows.all())
    out = df.copy(deep=False) if everything else df.loc[keep_rows]
    for i, attribute in enumerate(encoded.problem.attributes):
        level = int(levels[i])
        if level == 0:
            continue
        if attribute.cardinality(level) == 1:  # one label (often '*'): no per-record lookup (half the take's time)
            taken = pa.repeat(attribute.label_arrays[level][0], len(out))
        else:
            codes = encoded.row_codes[i] if everything else encoded.row_codes[i][keep_rows]
            taken = pc.take(attribute.label_arrays[level], pa.array(attribute.leaf_to_level32[level][codes]))
        out[attribute.name] = pd.array(taken, dtype=_STR_DTYPE)
    return out.reset_index(drop=True)
