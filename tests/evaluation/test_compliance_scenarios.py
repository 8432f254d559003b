"""Done-when scenarios of issue 5 at engine level, on real training (ppml.training).

* a non-private model over-fitted on a small sample fails the membership-inference gate (not promotable);
* the DP model trained like the demo passes every evaluation gate (promotable);
* (broken DP caught by the audit: see test_epsilon_audit_run.py).

Limits are those of policies/adult_gdpr.yaml: AUC <= 0.6, TPR <= 5% at FPR 1%, accuracy >= 0.78, ROC AUC >= 0.80,
and the built-in ones: balanced accuracy and ROC AUC CI lower bounds >= 0.52, group FPR/FNR gap <= 0.35.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppml.evaluation import (
    AuditSettings,
    audit_verdict,
    evaluate_utility,
    lira_offline_attack,
    loss_threshold_attack,
    mia_verdicts,
    run_one_run_audit,
    strongest_attack,
    utility_verdicts,
)
from ppml.training import DPConfig, ModelSpec, TrainingConfig, train_dp, train_non_private
from ppml.training.baseline import tune_baseline

LIMITS = {"max_auc": 0.6, "max_tpr_at_low_fpr": 0.05, "low_fpr": 0.01}
OBJECTIVES = {
    "min_accuracy": 0.78,
    "min_roc_auc": 0.80,
    "max_utility_gap": 0.06,
    "min_margin_over_trivial": 0.02,
    "max_group_error_rate_gap": 0.35,
}


@pytest.mark.slow
def test_overfit_non_private_model_fails_the_membership_inference_gate(adult) -> None:
    members = adult.rows(np.arange(0, 200))
    non_members = adult.rows(np.arange(3000, 3200))
    pool = adult.rows(np.arange(3200, 6000))
    wide = TrainingConfig(
        model=ModelSpec("mlp", (256, 256)),
        epochs=100,
        batch_size=64,
        learning_rate=1e-3,
        optimizer="adam",
        seed=0,
        device="cpu",
    )
    target = train_non_private(members, wide)

    def reference(split):
        return train_non_private(split, wide)

    attacks = [
        loss_threshold_attack(target, members, non_members, name="overfit"),
        lira_offline_attack(target, members, non_members, pool, reference, n_reference_models=4, name="overfit"),
    ]
    verdicts = mia_verdicts(attacks, **LIMITS)
    worst = strongest_attack(attacks, low_fpr=LIMITS["low_fpr"])
    assert worst["auc"] > 0.6, [a.to_dict() | {"roc_curve": None} for a in attacks]
    assert not all(v.passed for v in verdicts)  # the gate blocks promotion
    assert any(not v.passed and "lira_offline" in v.requirement for v in verdicts)

    # Power where there is something to find: at 0.1% FPR (no false positive among the 200 non-members) the
    # strongest attack finds members of the over-fitted model, and (almost) none of the same model trained with
    # DP-SGD at epsilon 1 on the same members (measured: 0.07 vs 0.005).
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=5)

    def private(split):
        return train_dp(split, wide, dp)

    private_target = private(members)
    private_attacks = [
        loss_threshold_attack(private_target, members, non_members, name="dp", low_fprs=(0.001, 0.01)),
        lira_offline_attack(
            private_target, members, non_members, pool, private, n_reference_models=4, name="dp", low_fprs=(0.001, 0.01)
        ),
    ]
    overfit_tpr = strongest_attack(attacks, low_fpr=0.001)["tpr_at_low_fpr"]
    private_tpr = strongest_attack(private_attacks, low_fpr=0.001)["tpr_at_low_fpr"]
    assert overfit_tpr >= 0.04 and overfit_tpr >= private_tpr + 0.03, (overfit_tpr, private_tpr)
    assert not all(v.passed for v in mia_verdicts(attacks, max_auc=0.6, max_tpr_at_low_fpr=0.02, low_fpr=0.001))


@pytest.fixture(scope="module")
def demo_dp(adult_demo):
    """Trained like policies/adult_gdpr.yaml (MLP(64), SGD, 4 epochs, batch 512, epsilon 1, delta 1e-5) on 20,000
    records; the learning rate is 0.5 because 0.1 under-fits in 4 noisy epochs on this encoding."""
    config = TrainingConfig(
        model=ModelSpec("mlp", (64,)),
        epochs=4,
        batch_size=512,
        learning_rate=0.5,
        optimizer="sgd",
        seed=7,
        device="cpu",
    )
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=11)
    train = adult_demo.rows(np.arange(0, 20000))
    return config, dp, train, train_dp(train, config, dp)


@pytest.mark.slow
def test_demo_dp_model_passes_every_evaluation_gate(adult_demo, demo_dp) -> None:
    config, dp, train, model = demo_dp
    test_idx = np.arange(20000, 22000)
    test = adult_demo.rows(test_idx)
    pool = adult_demo.rows(np.arange(22000, 24000))
    assert model.epsilon <= 1.0 + 1e-6

    attacks = [
        loss_threshold_attack(model, train, test, name="dp"),
        lira_offline_attack(
            model, train, test, pool, lambda split: train_dp(split, config, dp), n_reference_models=2, name="dp"
        ),
    ]
    groups = {"sex": adult_demo.sex[test_idx], "race": adult_demo.race[test_idx]}
    utility = evaluate_utility(model, test, name="dp", groups=groups, n_resamples=200)
    validation = adult_demo.rows(np.arange(22000, 24000))
    tuned = tune_baseline(train, validation, hidden_sizes=(64,), seed=7)  # the gap is against a tuned baseline
    baseline = evaluate_utility(tuned.model, test, name="baseline", groups=groups)
    audit = run_one_run_audit(train, config, dp, settings=AuditSettings(n_canaries=500, seed=3))

    verdicts = [
        *mia_verdicts(attacks, **LIMITS),
        *utility_verdicts(utility, OBJECTIVES, baseline=baseline),
        audit_verdict(audit),
    ]
    failed = [v.to_dict() for v in verdicts if not v.passed]
    assert not failed, failed  # every gate passes: the model may be promoted
    assert strongest_attack(attacks, low_fpr=0.01)["auc"] < 0.55
    json.dumps({"verdicts": [v.to_dict() for v in verdicts], "utility": utility.to_dict(), "audit": audit.to_dict()})
