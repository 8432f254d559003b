"""Keep the previous release's generalization across retrains while it is still valid and nearly optimal.

Why: a weekly retrain anonymizes a window that overlaps last week's by ~90 %. Near-equivalent lattice nodes then
swap places as the optimum from one week to the next (one week age is kept and relationship suppressed, the next
week the other way round), and with them the model's features and its accuracy -- measured in
``bench/weekly_bench.py``: the held-out accuracy moved 1.5 points between weeks on the same policy and epsilon
while DP-SGD's own seed-to-seed spread was 0.2-0.4 points. A retrain therefore keeps the previous transformation
when it still satisfies every privacy model within the suppression limit on the *new* window (checked here,
exactly like the optimum) and loses at most ``tolerance`` (relative) more information than the new optimum.
The privacy guarantee is the same either way: only the choice among valid transformations changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from ppml.anonymization.lattice import Problem, SearchOutcome


def prefer_previous(
    problem: Problem,
    metric: Any,
    outcome: SearchOutcome,
    previous: Mapping[str, int] | None,
    tolerance: float,
) -> tuple[SearchOutcome, dict[str, Any] | None]:
    """The search's outcome, or the previous transformation's when it qualifies; with a report of the choice."""
    if previous is None or outcome.levels is None:
        return outcome, None
    names = [attribute.name for attribute in problem.attributes]
    report: dict[str, Any] = {"previous": dict(previous), "optimum": dict(zip(names, outcome.levels, strict=True))}
    report |= {"optimum_value": float(outcome.value), "tolerance": tolerance, "kept": False}
    if sorted(previous) != sorted(names):
        return outcome, report | {"reason": "the previous release had other quasi-identifiers"}
    levels = np.array([int(previous[name]) for name in names], dtype=np.int64)
    if np.any(levels < 0) or np.any(levels >= np.array(problem.heights)):
        return outcome, report | {"reason": "a previous level is outside this window's hierarchy"}
    if tuple(int(level) for level in levels) == tuple(outcome.levels):
        return outcome, report | {"kept": True, "previous_value": float(outcome.value), "reason": "it is the optimum"}
    table = problem.rollup(problem.base, levels)
    assessment = problem.assess(table)
    if not assessment.accepted:
        return outcome, report | {"reason": "it no longer satisfies the privacy models within the suppression limit"}
    value = float(metric.value(table, assessment.suppressed))
    report["previous_value"] = value
    if value > float(outcome.value) * (1 + tolerance) + 1e-12:
        return outcome, report | {"reason": f"it loses more than {tolerance:.0%} more information than the optimum"}
    kept = replace(outcome, levels=tuple(int(level) for level in levels), value=value, table=table)
    return kept, report | {"kept": True, "reason": f"valid, within {tolerance:.0%} of the optimum's loss"}
