"""A differentially private summary of the anonymized records, released with OpenDP.

k-anonymity protects the released rows against re-identification, not against what aggregate statistics reveal
about a person being in the data. The summary published next to them (how many records, how many per category,
means of numeric columns) is therefore released under differential privacy with its own budget,
``privacy.dp_statistics_epsilon``.

Privacy unit: one record added or removed (OpenDP's symmetric distance, d_in = 1). Mechanisms, all from OpenDP
(the library's proofs, not ours): the total count and the counts per category use the (discrete) Laplace
mechanism on integers; a numeric column's mean is a DP clamped sum divided by the DP total count (no record count
is assumed public). Every query's noise scale is found by OpenDP's ``binary_search_param`` so that its privacy
map gives exactly its share of epsilon.

Epsilon split (basic sequential composition): with C categorical and N numeric columns there are 1 + C + N
queries, each gets epsilon / (1 + C + N); the total is at most the policy's epsilon. Category sets and numeric
bounds must be public (from the policy or the hierarchies): categories read from the data leak which values
occur, and the result says so (``public_categories``).

Lifetime accounting: the summary reads the same people as the DP training, so :func:`release_dp_summary` charges
it to the lifetime ledger as a pure epsilon-DP release through the same reservation path as DP-SGD -- reserved
(refused when the lifetime budget would be exceeded) and pre-charged at its full epsilon before any record is
read, then settled. Every materialization is a fresh noisy release and is charged again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ppml.errors import input_error
from ppml.ledger import DataScope, LifetimeBudget, PlannedRun, PrivacyLedger

__all__ = ["CategoryCounts", "DPSummary", "NumericMean", "dp_summary", "release_dp_summary"]


@dataclass(frozen=True)
class CategoryCounts:
    column: str
    counts: dict[str, int]  # noisy count per category; "(other)" counts values outside the category set
    epsilon: float
    noise_scale: float
    public_categories: bool


@dataclass(frozen=True)
class NumericMean:
    column: str
    mean: float  # noisy clamped sum / noisy total count
    lower: float
    upper: float
    epsilon: float  # of the sum; the count is shared and accounted once
    noise_scale: float


@dataclass(frozen=True)
class DPSummary:
    """The released summary and its accounting."""

    total_count: int
    total_count_noise_scale: float
    categories: list[CategoryCounts]
    means: list[NumericMean]
    epsilon_spent: float
    epsilon_budget: float
    epsilon_per_query: float
    queries: int
    privacy_unit: str = "one record added or removed"
    mechanisms: list[str] = field(
        default_factory=lambda: ["discrete Laplace (counts)", "Laplace on a clamped sum (means)"]
    )
    library: str = "OpenDP"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


def dp_summary(
    df: pd.DataFrame,
    *,
    epsilon: float,
    categorical: Mapping[str, Sequence[str] | None] | Sequence[str] = (),
    numeric: Mapping[str, tuple[float, float]] | None = None,
    source: str = "anonymized_records",
) -> DPSummary:
    """Release the DP summary of ``df`` with total privacy loss at most ``epsilon``.

    ``categorical`` maps a column to its public category set (``None``: read from the data, flagged);
    ``numeric`` maps a column to public clamping bounds ``(lower, upper)``.
    """
    if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
        raise input_error(source, "dp_statistics_epsilon", f"epsilon must be > 0, got {epsilon!r}", "set e.g. 0.5")
    categories = dict.fromkeys(categorical) if not isinstance(categorical, Mapping) else dict(categorical)
    bounds = dict(numeric or {})
    for column in [*categories, *bounds]:
        if column not in df.columns:
            raise input_error(source, column, f"column not in the data ({list(df.columns)})", "correct the name")
    for column, (lower, upper) in bounds.items():
        if not (math.isfinite(lower) and math.isfinite(upper) and lower < upper):
            raise input_error(source, column, f"bounds ({lower}, {upper}) are not lower < upper", "fix the bounds")
    dp = _opendp()
    queries = 1 + len(categories) + len(bounds)
    share = epsilon / queries

    text_space = dp.vector_domain(dp.atom_domain(T=str)), dp.symmetric_distance()

    def count_measurement(scale: float):
        return text_space >> dp.t.then_count() >> dp.m.then_laplace(scale)

    count_scale = dp.binary_search_param(count_measurement, d_in=1, d_out=share)
    counter = count_measurement(count_scale)
    spent = counter.map(1)
    total = int(counter([""] * len(df)))

    released_categories = []
    for column, public in categories.items():
        counts, cost = _noisy_histogram(dp, text_space, column, df[column], public, share)
        spent += cost
        released_categories.append(counts)
    released_means = []
    for column, (lower, upper) in bounds.items():
        mean, cost = _noisy_mean(dp, column, df[column], float(lower), float(upper), total, share)
        spent += cost
        released_means.append(mean)

    return DPSummary(
        total_count=total,
        total_count_noise_scale=float(count_scale),
        categories=released_categories,
        means=released_means,
        epsilon_spent=float(spent),
        epsilon_budget=float(epsilon),
        epsilon_per_query=share,
        queries=queries,
    )


def _noisy_histogram(  # type: ignore[no-untyped-def]
    dp: Any, text_space: Any, name: str, column: pd.Series, public: Sequence[str] | None, share: float
):
    """Laplace counts per category (plus one for values outside a public set) at ``share`` epsilon, and its cost."""
    values = column.astype(str).tolist()
    category_set = [str(c) for c in public] if public is not None else sorted(set(values))

    def histogram(scale: float, cats: list[str] = category_set):  # type: ignore[no-untyped-def]
        return (
            text_space >> dp.t.then_count_by_categories(categories=cats, null_category=True) >> dp.m.then_laplace(scale)
        )

    scale = dp.binary_search_param(histogram, d_in=1, d_out=share)
    measurement = histogram(scale)
    noisy = measurement(values)
    counts = {c: int(v) for c, v in zip(category_set, noisy, strict=False)}
    counts["(other)"] = int(noisy[-1])
    return CategoryCounts(name, counts, share, float(scale), public is not None), measurement.map(1)


def _noisy_mean(  # type: ignore[no-untyped-def]
    dp: Any, name: str, column: pd.Series, lower: float, upper: float, total: int, share: float
):
    """A clamped Laplace sum at ``share`` epsilon divided by the noisy total count, and its cost."""
    float_space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
    values = pd.to_numeric(column, errors="coerce").astype(float).fillna(lower).to_numpy()

    def clamped_sum(scale: float):  # type: ignore[no-untyped-def]
        return float_space >> dp.t.then_clamp((lower, upper)) >> dp.t.then_sum() >> dp.m.then_laplace(scale)

    scale = dp.binary_search_param(clamped_sum, d_in=1, d_out=share)
    measurement = clamped_sum(scale)
    noisy_sum = float(measurement(values.tolist()))
    mean = float(np.clip(noisy_sum / max(total, 1), lower, upper))
    return NumericMean(name, mean, lower, upper, share, float(scale)), measurement.map(1)


def release_dp_summary(
    df: pd.DataFrame,
    *,
    epsilon: float,
    ledger: PrivacyLedger,
    scope: DataScope,
    lifetime: LifetimeBudget,
    request_key: str,
    dagster_run_id: str | None = None,
    categorical: Mapping[str, Sequence[str] | None] | Sequence[str] = (),
    numeric: Mapping[str, tuple[float, float]] | None = None,
    source: str = "anonymized_records",
) -> tuple[DPSummary, str]:
    """:func:`dp_summary`, charged to the lifetime ledger; returns the summary and its ledger run id.

    Raises :class:`ppml.ledger.BudgetExceededError` (nothing read, nothing released) when the release would push
    the lifetime budget of ``scope`` past ``lifetime``.
    """
    plan = PlannedRun.pure_dp(epsilon, config={"mechanism": "OpenDP Laplace summary", "source": source}, label=source)
    reservation = ledger.reserve(scope, [plan], lifetime, request_key=request_key, dagster_run_id=dagster_run_id)
    run_id = reservation.run_ids[0]
    ledger.pre_charge(run_id, steps=1, epsilon=plan.epsilon_planned)
    try:
        summary = dp_summary(df, epsilon=epsilon, categorical=categorical, numeric=numeric, source=source)
    except BaseException as error:
        ledger.fail_run(run_id, f"{type(error).__name__}: {error}")  # keeps the pre-charged epsilon
        ledger.finish_request(reservation.request_id, selected_run_id=None, status="failed")
        raise
    ledger.complete_run(run_id, steps=1, epsilon=max(summary.epsilon_spent, plan.epsilon_planned))
    ledger.finish_request(reservation.request_id, selected_run_id=run_id)
    return summary, run_id
