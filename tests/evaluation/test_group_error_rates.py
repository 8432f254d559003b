"""Disaggregated FPR and FNR: exact per-group values, intervals, the gap verdict, and small groups left out."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from ppml.compliance import utility_gate_verdicts
from ppml.errors import PPMLError
from ppml.evaluation import group_error_rates, utility_report, utility_verdicts
from ppml.policy import load_policy
from tests.support import GDPR_POLICY


def _group(rng: np.random.Generator, n_pos: int, n_neg: int, fnr: float, fpr: float) -> tuple[np.ndarray, ...]:
    """Labels and scores of one group with exactly the given error rates at threshold 0.5."""
    y = np.r_[np.ones(n_pos, np.int64), np.zeros(n_neg, np.int64)]
    missed = rng.permutation(n_pos) < round(fnr * n_pos)
    false_alarm = rng.permutation(n_neg) < round(fpr * n_neg)
    wrong = np.r_[missed, false_alarm]
    predicted = np.where(wrong, 1 - y, y)
    p = np.where(predicted == 1, rng.uniform(0.55, 0.95, len(y)), rng.uniform(0.05, 0.45, len(y)))
    return y, p


@pytest.fixture(scope="module")
def unequal() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group A misses 10% of its positives, group B 40%; FPRs 5% and 10%; group C is too small to compare."""
    rng = np.random.default_rng(0)
    parts = {"A": _group(rng, 400, 600, 0.10, 0.05), "B": _group(rng, 300, 700, 0.40, 0.10)}
    parts["C"] = _group(rng, 10, 50, 0.9, 0.0)
    y = np.concatenate([parts[g][0] for g in parts])
    p = np.concatenate([parts[g][1] for g in parts])
    groups = np.concatenate([[g] * len(parts[g][0]) for g in parts])
    return y, p, groups


def test_per_group_rates_match_the_confusion_matrix_and_carry_intervals(unequal) -> None:  # type: ignore[no-untyped-def]
    y, p, groups = unequal
    rates = group_error_rates(utility_report(y, p, groups={"g": groups}, seed=0))
    attribute = rates.attributes["g"]
    for name in ("A", "B"):
        mask = groups == name
        tn, fp, fn, tp = confusion_matrix(y[mask], (p[mask] >= 0.5).astype(int)).ravel()
        entry = attribute.groups[name]
        assert entry["fpr"]["value"] == pytest.approx(fp / (fp + tn))
        assert entry["fnr"]["value"] == pytest.approx(fn / (fn + tp))
        assert entry["fnr"]["ci_low"] < entry["fnr"]["value"] < entry["fnr"]["ci_high"]
    # C's 50 negatives are enough for its FPR (0) to be compared: the FPR gap is B's 10% minus C's 0%.
    assert attribute.gaps["fnr"] == pytest.approx(0.30) and attribute.gaps["fpr"] == pytest.approx(0.10)
    assert attribute.extremes["fnr"] == ("A", "B") and attribute.extremes["fpr"] == ("C", "B")
    # Group C (10 positives) is shown but not compared: its FNR of 0.9 would otherwise dominate the gap.
    assert attribute.groups["C"]["fnr"]["compared"] is False and attribute.groups["C"]["fpr"]["compared"] is True
    assert attribute.groups["C"]["fnr"]["value"] is None and attribute.groups["C"]["n_positive"] is None  # suppressed
    assert attribute.groups["A"]["n_positive"] == 400
    assert rates.largest_gap == pytest.approx(0.30) and "FNR of 'g'" in rates.describe()
    # what the intervals establish: B's lower FNR bound minus A's upper one, positive but below the point gap
    a, b = attribute.groups["A"]["fnr"], attribute.groups["B"]["fnr"]
    assert attribute.evidenced_gaps["fnr"] == pytest.approx(b["ci_low"] - a["ci_high"])
    assert 0.1 < rates.largest_evidenced_gap < 0.30


def test_the_gate_passes_and_fails_on_the_policy_limit(unequal) -> None:  # type: ignore[no-untyped-def]
    y, p, groups = unequal
    report = utility_report(y, p, groups={"g": groups}, seed=0)
    evidence = {
        "dp": {"accuracy": 0.8, "roc_auc": 0.9},
        "dp_ci": {"balanced_accuracy": [0.7, 0.8], "roc_auc": [0.85, 0.95]},
        "group_error_rates": group_error_rates(report).to_dict(),
    }
    policy = load_policy(GDPR_POLICY).policy

    def verdict(limit: float):  # type: ignore[no-untyped-def]
        objectives = policy.objectives.model_copy(update={"max_group_error_rate_gap": limit})
        checks = utility_gate_verdicts(policy.model_copy(update={"objectives": objectives}), evidence)
        return next(v for v in checks if v.name == "group_error_rate_gap")

    evidenced = group_error_rates(report).largest_evidenced_gap
    assert not verdict(evidenced - 0.01).passed
    assert verdict(evidenced + 0.01).passed
    assert verdict(0.35).measured == pytest.approx(evidenced)
    # The engine-level verdict reads the same objective key.
    (engine,) = utility_verdicts(report, {"max_group_error_rate_gap": evidenced - 0.01})
    assert not engine.passed and engine.measured == pytest.approx(evidenced)
    with pytest.raises(PPMLError, match="max_group_error_rate_gap"):
        utility_verdicts(report, {"max_group_error_rate_gap": 1.5})


def test_equal_error_rates_pass_and_missing_evidence_fails() -> None:
    rng = np.random.default_rng(1)
    a, b = _group(rng, 200, 300, 0.2, 0.1), _group(rng, 200, 300, 0.2, 0.1)
    y, p = np.r_[a[0], b[0]], np.r_[a[1], b[1]]
    groups = np.r_[["a"] * 500, ["b"] * 500]
    rates = group_error_rates(utility_report(y, p, groups={"g": groups}, seed=0))
    assert rates.largest_gap == pytest.approx(0.0)
    policy = load_policy(GDPR_POLICY).policy
    evidence = {"dp": {"accuracy": 0.8, "roc_auc": 0.9}, "dp_ci": {}}
    missing = next(v for v in utility_gate_verdicts(policy, evidence) if v.name == "group_error_rate_gap")
    assert not missing.passed and missing.measured is None
