"""Judging a utility report against the policy's objectives: one verdict per objective, the built-in margin over
the trivial predictor, and the policy-time warnings for objectives a trivial model already meets.

(Split from :mod:`ppml.evaluation.utility`, which measures; this module judges.)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ppml.errors import input_error
from ppml.evaluation._common import Verdict, check_fraction, check_labels
from ppml.evaluation.error_rates import group_error_rates
from ppml.evaluation.utility import TRIVIAL_LEVEL, UtilityReport, compare_models

# Objective key -> (metric, comparison). "max_utility_gap" and "max_group_gap" need more than one report.
OBJECTIVE_KEYS: dict[str, tuple[str, str]] = {
    "min_accuracy": ("accuracy", ">="),
    "min_balanced_accuracy": ("balanced_accuracy", ">="),
    "min_roc_auc": ("roc_auc", ">="),
    "min_f1": ("f1", ">="),
    "max_ece": ("ece", "<="),
}
GAP_KEYS = ("max_utility_gap", "max_group_gap", "min_margin_over_trivial", "max_group_error_rate_gap")


def utility_verdicts(
    report: UtilityReport,
    objectives: Mapping[str, float],
    *,
    baseline: UtilityReport | None = None,
    source: str = "policy objectives",
) -> list[Verdict]:
    """One verdict per objective, e.g. ``{"min_accuracy": 0.8, "min_roc_auc": 0.85, "max_utility_gap": 0.05}``.

    ``max_utility_gap`` compares accuracy with ``baseline`` (required for it); ``max_group_gap`` limits the
    accuracy gap between the best and worst group of every protected attribute. Unknown keys are errors, so a
    misspelt objective cannot silently pass.
    """
    verdicts: list[Verdict] = []
    for key, limit in objectives.items():
        if key == "min_margin_over_trivial":
            margin = check_fraction(limit, source, key, low=0, high=TRIVIAL_LEVEL, closed="low")
            verdicts.extend(trivial_margin_verdicts(report, margin))
            continue
        if key not in OBJECTIVE_KEYS and key not in GAP_KEYS:
            raise input_error(
                source, key, "unknown utility objective", f"use one of {sorted([*OBJECTIVE_KEYS, *GAP_KEYS])}"
            )
        limit = check_fraction(limit, source, key, low=0, high=1, closed="both")
        if key in OBJECTIVE_KEYS:
            verdicts.append(_metric_verdict(report, key, limit))
        elif key == "max_utility_gap":
            verdicts.append(_utility_gap_verdict(report, baseline, limit))
        elif key == "max_group_gap":
            verdicts.append(_group_gap_verdict(report, limit))
        else:  # max_group_error_rate_gap
            verdicts.append(_error_rate_gap_verdict(report, limit))
    return verdicts


def _metric_verdict(report: UtilityReport, key: str, limit: float) -> Verdict:
    metric, comparison = OBJECTIVE_KEYS[key]
    estimate = report.metrics[metric]
    return Verdict.check(
        key,
        estimate.value,
        limit,
        comparison,  # type: ignore[arg-type]
        f"{report.model} {metric} {_fmt(estimate.value)} "
        f"(95% CI {_fmt(estimate.ci_low)}-{_fmt(estimate.ci_high)}) on {report.n} records",
    )


def _utility_gap_verdict(report: UtilityReport, baseline: UtilityReport | None, limit: float) -> Verdict:
    key = "max_utility_gap"
    if baseline is None:
        return Verdict.check(key, None, limit, "<=", "no non-private baseline to compare with")
    comparison = compare_models(report, baseline)
    return Verdict.check(
        key,
        comparison.accuracy_gap,
        limit,
        "<=",
        f"accuracy {_fmt(baseline.value('accuracy'))} ({baseline.model}) minus "
        f"{_fmt(report.value('accuracy'))} ({report.model})",
    )


def _group_gap_verdict(report: UtilityReport, limit: float) -> Verdict:
    key = "max_group_gap"
    if not report.groups:
        return Verdict.check(key, None, limit, "<=", "no protected attributes were evaluated")
    worst_attr = max(report.groups, key=lambda a: report.groups[a].gaps["accuracy"] or 0.0)
    breakdown = report.groups[worst_attr]
    return Verdict.check(
        key,
        breakdown.gaps["accuracy"] or 0.0,
        limit,
        "<=",
        f"largest accuracy gap between groups of '{worst_attr}' (worst group: {breakdown.worst_group})",
    )


def _error_rate_gap_verdict(report: UtilityReport, limit: float) -> Verdict:
    rates = group_error_rates(report)
    return Verdict.check(
        "max_group_error_rate_gap",
        rates.largest_evidenced_gap if report.groups else None,
        limit,
        "<=",
        rates.describe() if report.groups else "no protected attributes were evaluated",
    )


def trivial_predictor(y_true: np.ndarray, n_classes: int = 2) -> dict[str, float]:
    """What a model that ignores the record reaches on these labels: the majority share as accuracy, balanced
    accuracy 1/K (0.5 for a binary label) and ROC AUC 0.5 (a constant or record-independent score ranks no
    member of a class above a non-member; for K classes, each one-vs-rest AUC)."""
    y = check_labels(y_true, "trivial predictor", n_classes)
    if n_classes > 2:
        shares = np.bincount(y, minlength=n_classes) / len(y) if len(y) else np.full(n_classes, np.nan)
        return {
            "accuracy": float(shares.max()),
            "balanced_accuracy": 1.0 / n_classes,
            "roc_auc": TRIVIAL_LEVEL,
            "n_classes": n_classes,
            "class_shares": [float(v) for v in shares],
        }
    share = float(y.mean()) if len(y) else float("nan")
    return {
        "accuracy": max(share, 1 - share),
        "balanced_accuracy": TRIVIAL_LEVEL,
        "roc_auc": TRIVIAL_LEVEL,
        "positive_rate": share,
    }


def trivial_margin_verdicts(report: UtilityReport, margin: float) -> list[Verdict]:
    """The model beats the class prior with confidence: the lower bounds of the bootstrap intervals of balanced
    accuracy and ROC AUC are at least the trivial level plus ``margin`` (0.5 for both on a binary label; 1/K for
    balanced accuracy and 0.5 for the one-vs-rest macro AUC on K classes). Accuracy cannot show this (a
    majority-class predictor is 80% accurate on an 80/20 label); with no interval (``n_resamples=0``) the
    verdict fails."""
    verdicts = []
    levels = {"balanced_accuracy": report.trivial_balanced_accuracy, "roc_auc": TRIVIAL_LEVEL}
    for metric, level in levels.items():
        estimate = report.metrics[metric]
        verdicts.append(
            Verdict.check(
                f"min_margin_over_trivial:{metric}",
                estimate.ci_low,
                level + margin,
                ">=",
                f"{report.model} {metric} {_fmt(estimate.value)}, {report.confidence:.0%} CI lower bound "
                f"{_fmt(estimate.ci_low)}; the trivial predictor reaches {level:.4g}",
            )
        )
    return verdicts


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def objective_warnings(
    objectives: Mapping[str, float], source: str, *, labels: np.ndarray | None = None, data: str = "the data"
) -> list[str]:
    """Objectives a trivial predictor already meets, as one line each (file, field, fix) for policy validation.

    Not errors: the gate refuses a trivial model through its built-in verdicts anyway. But an objective at or
    below the trivial level states nothing, which is usually a mistake (an accuracy target copied from a data
    set with a different class balance). ``labels`` (0/1, or class indices) are the data's labels, when known.
    """
    margin = float(objectives.get("min_margin_over_trivial", 0.02))
    found = []
    auc = objectives.get("min_roc_auc")
    if auc is not None and auc <= TRIVIAL_LEVEL + margin + 1e-12:
        found.append(
            f"{source}: field 'objectives.min_roc_auc': {auc:g} is at or below what a constant score reaches "
            f"(ROC AUC {TRIVIAL_LEVEL:g}, plus the gate's margin {margin:g}); fix: set it above "
            f"{TRIVIAL_LEVEL + margin:g}, at the ROC AUC the use case needs"
        )
    accuracy = objectives.get("min_accuracy")
    if labels is not None and len(labels) and accuracy is not None:
        labels = np.asarray(labels, dtype=np.int64)
        majority = trivial_predictor(labels, max(2, int(labels.max()) + 1))["accuracy"]
        if accuracy <= majority + 1e-12:
            found.append(
                f"{source}: field 'objectives.min_accuracy': {accuracy:g} is at or below the accuracy of predicting "
                f"the majority class for everyone ({majority:.4f} on {data}); fix: set it above {majority:.4f}, "
                "or state the objective as min_roc_auc"
            )
    return found
