"""LiRA reference models: the DP ones are charged (one run for disjoint slices), the non-private ones' weights and
per-record predictions never reach what is released (docs/training.md, "What reads personal data")."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ppml.evaluation import lira_offline_attack
from ppml.evaluation.charged_reference import ChargedReferenceTraining
from ppml.ledger import BudgetExceededError, DataScope, LifetimeBudget, PrivacyLedger
from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig, plan_dp_training, train_non_private
from tests.training.conftest import make_splits

CONFIG = TrainingConfig(model=ModelSpec(kind="logistic"), epochs=1, batch_size=100, learning_rate=0.1, seed=0)
DP = DPConfig(target_epsilon=1.0, target_delta=1e-5, accountant="rdp")
SCOPE = DataScope("synthetic-people")


@pytest.fixture()
def data() -> tuple[TabularSplit, TabularSplit, TabularSplit]:
    train, rest = make_splits(n_train=600, n_validation=1000, n_features=6)
    non_members = TabularSplit(rest.X[:300], rest.y[:300], rest.feature_names)
    pool = TabularSplit(rest.X[300:], rest.y[300:], rest.feature_names)
    return train, non_members, pool


def test_dp_reference_models_are_charged_once_for_their_disjoint_slices(tmp_path, data) -> None:  # type: ignore[no-untyped-def]
    train, non_members, pool = data
    target = train_non_private(train, CONFIG)
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        charged = ChargedReferenceTraining(ledger, SCOPE, LifetimeBudget(4.0, 1e-5), CONFIG, DP, request_key="r")
        lira_offline_attack(target, train, non_members, pool, charged, n_reference_models=3, min_reference_size=100)
        (run_id,) = charged.settle()
        assert charged.trained == 3
        (row,) = ledger.runs(SCOPE.dataset)
        slice_size = min(len(train.y), len(pool.y) // 3)
        plan = plan_dp_training(slice_size, CONFIG, DP)
        assert row.id == run_id and row.status == "completed" and row.kind == "dp"
        assert row.steps_charged == plan.planned_steps and row.epsilon_charged == pytest.approx(
            plan.epsilon_charged_planned
        )
        assert 0 < ledger.spent(SCOPE, 1e-5).epsilon <= row.epsilon_charged + 1e-9  # one run, not three
    finally:
        ledger.close()


def test_reference_models_over_budget_are_refused_before_any_trains(tmp_path, data) -> None:  # type: ignore[no-untyped-def]
    train, non_members, pool = data
    target = train_non_private(train, CONFIG)
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        expensive = dataclasses.replace(DP, target_epsilon=3.0)
        charged = ChargedReferenceTraining(ledger, SCOPE, LifetimeBudget(2.0, 1e-5), CONFIG, expensive, "r")
        with pytest.raises(BudgetExceededError):
            lira_offline_attack(target, train, non_members, pool, charged, n_reference_models=2, min_reference_size=100)
        assert charged.trained == 0 and [r.status for r in ledger.runs(SCOPE.dataset)] == ["refused"]
    finally:
        ledger.close()


def test_non_private_reference_models_leave_no_weights_or_per_record_predictions(data) -> None:  # type: ignore[no-untyped-def]
    """The argument for not charging the non-private baseline's reference models (they cannot be charged: a
    non-DP model has no finite epsilon): what leaves the attack is its aggregate result, which holds neither their
    weights nor any per-record prediction -- only AUC, TPRs and a down-sampled ROC curve."""
    train, non_members, pool = data
    target = train_non_private(train, CONFIG)
    seen: list[np.ndarray] = []

    def train_reference(split: TabularSplit):  # type: ignore[no-untyped-def]
        model = train_non_private(split, CONFIG)
        seen.append(model.predict_proba(np.concatenate([train.X, non_members.X])))
        seen.extend(p.detach().numpy().ravel() for p in model.module.parameters())
        return model

    result = lira_offline_attack(target, train, non_members, pool, train_reference, 2, min_reference_size=100)
    released = json.loads(json.dumps(result.to_dict(), default=str))
    numbers: list[float] = []
    lists: list[list] = []

    def walk(value) -> None:  # type: ignore[no-untyped-def]
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            lists.append(value)
            for item in value:
                walk(item)
        elif isinstance(value, float):
            numbers.append(value)

    walk(released)
    assert max(len(v) for v in lists) < len(non_members.y)  # nothing per record
    private = {round(float(v), 9) for array in seen for v in np.ravel(array) if 0.0 < abs(float(v)) < 1.0}
    leaked = [n for n in numbers if round(n, 9) in private]
    assert not leaked, f"{len(leaked)} reference-model predictions or weights in the released result"
