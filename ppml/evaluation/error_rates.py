"""Disaggregated error rates: false-positive and false-negative rates per protected group, and their gaps.

Accuracy per group hides *which* error a group bears: on Adult a model can be as accurate for women as for men
while missing far more of the high-income women (a higher false-negative rate). The largest between-group gap in
FPR or in FNR is the equalized-odds difference (Hardt, Price & Srebro 2016; fairlearn's
``equalized_odds_difference``), the quantity the gate limits with ``objectives.max_group_error_rate_gap``.

A rate is only compared when its denominator is large enough: FNR over a group's positives, FPR over its
negatives, each at least ``min_class_count`` (30). A group of 40 people with 4 positives has an FNR of 0, 0.25,
0.5 ... -- noise that would fail or pass the gate by chance, and a small cell that says something about a
handful of people. Such rates (and the group's count of positives) are suppressed in the evidence, marked not
compared.

The gate judges the gap the evidence establishes, not the point estimate: for each pair of compared groups the
lower end of the higher group's interval minus the upper end of the lower group's (at least 0). Between groups
of a few dozen positives the point gap swings by +-0.2 with the split alone (Adult's race groups: 0.25 with one
key, 0.44 with another), so a point-estimate gate would promote or refuse by chance; the lower bound refuses only
a disparity beyond the limit that sampling noise cannot explain. Both figures are in the evidence and the report.

A multi-class label (K > 2 classes) has no single positive class, so each rate is the **macro one-vs-rest**
rate: FNR = mean over classes of the share of the class's records predicted as another class (1 - balanced
accuracy), FPR = mean over classes of the share of the other classes' records predicted as this class. One
number per rate per group keeps the gate's rule (largest gap beyond the intervals) the same for every K; a
group's rates are compared only when every class holds at least ``min_class_count`` of its records (the
smallest class bounds how noisy its recall is).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppml.evaluation.utility import GroupMetrics, UtilityReport

ERROR_RATES = ("fpr", "fnr")
#: Smallest number of negatives (for FPR) or positives (for FNR) a group needs for its rate to be compared.
MIN_CLASS_COUNT = 30


@dataclass(frozen=True)
class AttributeErrorRates:
    """One protected attribute: each group's FPR and FNR with intervals, and the largest gap of each rate."""

    attribute: str
    groups: dict[str, dict[str, Any]]
    gaps: dict[str, float | None]  # rate -> highest minus lowest compared group
    extremes: dict[str, tuple[str, str] | None]  # rate -> (lowest group, highest group)
    evidenced_gaps: dict[str, float | None] = field(default_factory=dict)  # rate -> largest gap beyond the CIs

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "groups": self.groups,
            "gaps": self.gaps,
            "evidenced_gaps": self.evidenced_gaps,
            "extremes": {rate: list(pair) if pair else None for rate, pair in self.extremes.items()},
        }


@dataclass(frozen=True)
class GroupErrorRates:
    """Every protected attribute's error rates and the largest gap over attributes and both rates."""

    attributes: dict[str, AttributeErrorRates] = field(default_factory=dict)
    min_class_count: int = MIN_CLASS_COUNT
    confidence: float = 0.95
    n_classes: int = 2

    @property
    def largest(self) -> tuple[float, str, str] | None:
        """(gap, attribute, rate) of the largest gap, None when no attribute has two comparable groups."""
        found = [
            (gap, attribute, rate)
            for attribute, rates in self.attributes.items()
            for rate, gap in rates.gaps.items()
            if gap is not None
        ]
        return max(found) if found else None

    @property
    def largest_evidenced_gap(self) -> float:
        """The largest gap the intervals establish (what the gate judges); 0 when nothing can be compared."""
        found = [g for rates in self.attributes.values() for g in rates.evidenced_gaps.values() if g is not None]
        return max(found, default=0.0)

    @property
    def largest_gap(self) -> float:
        """0 when no two groups can be compared (one group only, or all too small): there is no measured gap."""
        return self.largest[0] if self.largest else 0.0

    def describe(self) -> str:
        if self.largest is None:
            if self.n_classes > 2:
                return (
                    f"no attribute has two groups with at least {self.min_class_count} records of every one of the "
                    f"{self.n_classes} classes (macro one-vs-rest rates)"
                )
            return f"no attribute has two groups with at least {self.min_class_count} positives or negatives"
        gap, attribute, rate = self.largest
        low, high = self.attributes[attribute].extremes[rate] or ("?", "?")
        return (
            f"largest gap: {rate.upper()} of '{attribute}', {high} minus {low} = {gap:.4f}; "
            f"beyond the {self.confidence:.0%} intervals: {self.largest_evidenced_gap:.4f}"
        )

    def to_dict(self) -> dict[str, Any]:
        largest = self.largest
        return {
            "largest_gap": self.largest_gap,
            "largest_evidenced_gap": self.largest_evidenced_gap,
            "largest_gap_at": f"{largest[1]}: {largest[2]}" if largest else None,
            "detail": self.describe(),
            "min_class_count": self.min_class_count,
            "confidence": self.confidence,
            "n_classes": self.n_classes,
            "attributes": {name: rates.to_dict() for name, rates in self.attributes.items()},
        }


def _denominators(group: GroupMetrics) -> dict[str, int]:
    """The smallest count each rate divides by: negatives / positives, or for K classes (macro one-vs-rest
    rates) the smallest class's records (FNR) and the records outside the largest class (FPR)."""
    if group.class_counts:
        return {"fpr": group.n - max(group.class_counts), "fnr": min(group.class_counts)}
    return {"fpr": group.n - group.n_positive, "fnr": group.n_positive}


def group_error_rates(report: UtilityReport, *, min_class_count: int = MIN_CLASS_COUNT) -> GroupErrorRates:
    """FPR and FNR with bootstrap intervals per reported group of each protected attribute of ``report``."""
    attributes: dict[str, AttributeErrorRates] = {}
    for attribute, breakdown in report.groups.items():
        groups: dict[str, dict[str, Any]] = {}
        compared: dict[str, dict[str, float]] = {rate: {} for rate in ERROR_RATES}
        intervals: dict[str, dict[str, tuple[float, float]]] = {rate: {} for rate in ERROR_RATES}
        for name, group in breakdown.groups.items():
            if not group.reported:
                continue
            counts = _denominators(group)
            shown = group.n_positive if min(counts.values()) >= min_class_count else None
            entry: dict[str, Any] = {"n": group.n, "n_positive": shown if not group.class_counts else None}
            if group.class_counts and shown is not None:
                entry["class_counts"] = list(group.class_counts)
            for rate in ERROR_RATES:
                estimate = group.metrics[rate]
                usable = counts[rate] >= min_class_count and estimate.value is not None
                # A rate over a handful of people is suppressed, not just left out: 3 of 5 is a small cell.
                values = estimate.to_dict() if usable else {"value": None, "ci_low": None, "ci_high": None}
                entry[rate] = {**values, "compared": usable}
                if usable:
                    compared[rate][name] = float(estimate.value)  # type: ignore[arg-type]
                    value = compared[rate][name]
                    low, high = estimate.ci_low, estimate.ci_high
                    intervals[rate][name] = (
                        value if low is None else float(low),
                        value if high is None else float(high),
                    )
            groups[name] = entry
        gaps: dict[str, float | None] = {}
        extremes: dict[str, tuple[str, str] | None] = {}
        evidenced: dict[str, float | None] = {}
        for rate, values in compared.items():
            if len(values) < 2:
                gaps[rate], extremes[rate], evidenced[rate] = None, None, None
                continue
            bounds = intervals[rate].values()
            evidenced[rate] = max(0.0, max(low for low, _ in bounds) - min(high for _, high in bounds))
            low, high = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
            gaps[rate], extremes[rate] = values[high] - values[low], (low, high)
        attributes[attribute] = AttributeErrorRates(attribute, groups, gaps, extremes, evidenced)
    return GroupErrorRates(attributes, min_class_count, report.confidence, report.n_classes)
