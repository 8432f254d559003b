"""Utility metrics: agreement with scikit-learn, bootstrap behaviour and speed, groups and verdicts."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from ppml.errors import PPMLError
from ppml.evaluation import compare_models, evaluate_utility, utility_report, utility_verdicts


def _toy(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1).round(2)  # rounded: many ties
    return y, p


def _ece_loop(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    predicted = p >= 0.5
    confidence = np.where(predicted, p, 1 - p)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs((predicted[mask] == y[mask]).mean() - confidence[mask].mean())
    return total / len(y)


def test_point_estimates_match_sklearn_and_a_plain_ece_loop() -> None:
    y, p = _toy(3000)
    report = utility_report(y, p, n_resamples=0)
    assert report.value("accuracy") == pytest.approx(accuracy_score(y, p >= 0.5))
    assert report.value("balanced_accuracy") == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
    assert report.value("f1") == pytest.approx(f1_score(y, p >= 0.5))
    assert report.value("roc_auc") == pytest.approx(roc_auc_score(y, p))
    assert report.value("ece") == pytest.approx(_ece_loop(y, p))
    assert report.metrics["accuracy"].ci_low is None  # no resamples, no interval


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=4, max_size=60))
def test_auc_with_heavy_ties_matches_sklearn(pairs: list[tuple[int, int]]) -> None:
    y = np.array([a for a, _ in pairs])
    p = np.array([b / 6 for _, b in pairs])
    auc = utility_report(y, p, n_resamples=0).value("roc_auc")
    if len(set(y)) < 2:
        assert auc is None
    else:
        assert auc == pytest.approx(roc_auc_score(y, p))


def test_bootstrap_is_seeded_covers_the_estimate_and_narrows_with_more_data() -> None:
    y, p = _toy(4000)
    a = utility_report(y, p, n_resamples=200, seed=3)
    b = utility_report(y, p, n_resamples=200, seed=3)
    assert a.to_dict() == b.to_dict()
    for name, estimate in a.metrics.items():
        assert estimate.ci_low <= estimate.value <= estimate.ci_high, name
    small = utility_report(y[:400], p[:400], n_resamples=200, seed=3).metrics["accuracy"]
    large = a.metrics["accuracy"]
    assert (large.ci_high - large.ci_low) < (small.ci_high - small.ci_low) / 2


def test_bootstrap_is_fast_enough_for_a_dagster_asset() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 5000)
    p = rng.random(5000)  # continuous: every score distinct, the slow case for AUC
    started = time.perf_counter()
    utility_report(y, p, n_resamples=500)
    assert time.perf_counter() - started < 2.0


def test_groups_report_gap_worst_group_and_hide_small_groups() -> None:
    rng = np.random.default_rng(2)
    n = 2000
    y = rng.integers(0, 2, n)
    group = np.where(rng.random(n) < 0.5, "A", "B").astype(object)
    group[:10] = "tiny"
    # Group A is predicted perfectly, group B at chance.
    p = np.where(group == "A", y * 0.9 + 0.05, rng.random(n))
    report = utility_report(y, p, groups={"g": group}, n_resamples=50, min_group_size=30)
    breakdown = report.groups["g"]
    assert not breakdown.groups["tiny"].reported and breakdown.groups["tiny"].metrics == {}
    assert breakdown.worst_group == "B"
    acc_a = breakdown.groups["A"].metrics["accuracy"].value
    acc_b = breakdown.groups["B"].metrics["accuracy"].value
    assert acc_a == pytest.approx(1.0)
    assert breakdown.gaps["accuracy"] == pytest.approx(acc_a - acc_b)
    json.dumps(report.to_dict())


def test_dp_next_to_baseline_and_verdicts(adult, as_model) -> None:
    train, test = np.arange(0, 4000), np.arange(4000, 6000)
    strong = LogisticRegression(max_iter=500).fit(adult.X[train], adult.y[train])
    weak = LogisticRegression(C=1e-4, max_iter=500).fit(adult.X[train], adult.y[train])
    groups = {"sex": adult.sex[test], "race": adult.race[test]}
    split = adult.rows(test)
    baseline = evaluate_utility(as_model(strong), split, name="baseline", groups=groups, n_resamples=100)
    private = evaluate_utility(as_model(weak), split, name="dp", groups=groups, n_resamples=100)
    assert baseline.value("accuracy") > 0.82

    comparison = compare_models(private, baseline)
    assert comparison.accuracy_gap == pytest.approx(baseline.value("accuracy") - private.value("accuracy"))
    assert comparison.largest_group_drop is not None and comparison.largest_group_drop_at.startswith(("sex", "race"))
    json.dumps(comparison.to_dict())

    objectives = {"min_accuracy": 0.8, "min_roc_auc": 0.85, "max_utility_gap": 0.01}
    base_verdicts = {v.requirement: v for v in utility_verdicts(baseline, objectives, baseline=baseline)}
    assert all(v.passed for v in base_verdicts.values())
    dp_verdicts = {v.requirement: v for v in utility_verdicts(private, objectives, baseline=baseline)}
    assert not dp_verdicts["max_utility_gap"].passed
    assert dp_verdicts["max_utility_gap"].measured == pytest.approx(comparison.accuracy_gap)
    json.dumps([v.to_dict() for v in dp_verdicts.values()])

    # Without a baseline the gap cannot be shown, so it must not pass.
    (gap,) = utility_verdicts(private, {"max_utility_gap": 0.05})
    assert not gap.passed and gap.measured is None


def test_bad_objectives_and_inputs_are_one_line_errors() -> None:
    y, p = _toy(100)
    report = utility_report(y, p, n_resamples=0)
    with pytest.raises(PPMLError, match="min_acuracy"):
        utility_verdicts(report, {"min_acuracy": 0.8})
    with pytest.raises(PPMLError, match=r"min_roc_auc.*outside"):
        utility_verdicts(report, {"min_roc_auc": 1.5})
    with pytest.raises(PPMLError, match="y_prob"):
        utility_report(y, p[:-1])
    with pytest.raises(PPMLError, match="labels"):
        utility_report(y + 1, p)
    with pytest.raises(PPMLError, match=r"groups\.sex"):
        utility_report(y, p, groups={"sex": ["F"] * 3})
