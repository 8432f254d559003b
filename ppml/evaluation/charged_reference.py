"""DP reference models for LiRA, charged to the lifetime ledger.

LiRA's reference models are trained with the target's DP-SGD on the validation split -- records of the same
people -- and the released attack result (AUC, TPR at low FPR) is computed from them, so they are charged like any
DP training, through the same reservation path: reserved (refused over budget) and pre-charged at their full plan
before the first one takes a step, settled afterwards.

One charge covers all of them: ``lira_offline_attack`` gives every reference model its own *disjoint* slice of the
pool, all of one size, so each person is in at most one reference model's training set and the set of reference
models is (epsilon, delta)-DP at the cost of one of them (parallel composition). A slice of another size (which the
attack never produces) would be reserved as a separate run: over-counting, never under-counting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppml.ledger import DataScope, LifetimeBudget, PlannedRun, PrivacyLedger
from ppml.training.config import DPConfig, TrainingConfig, fingerprint
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import train_dp
from ppml.training.planning import plan_dp_training
from ppml.training.trained_model import TrainedModel


@dataclass
class ChargedReferenceTraining:
    """``train_reference`` for :func:`ppml.evaluation.lira_offline_attack` that charges the ledger first."""

    ledger: PrivacyLedger
    scope: DataScope
    lifetime: LifetimeBudget
    config: TrainingConfig
    dp: DPConfig
    request_key: str
    dagster_run_id: str | None = None
    runs: dict[tuple[float, float, int], tuple[str, str, float]] = field(default_factory=dict)
    trained: int = 0

    def __call__(self, split: TabularSplit) -> TrainedModel:
        plan = plan_dp_training(split.n, self.config, self.dp)
        key = (plan.noise_multiplier_applied, plan.sample_rate, plan.planned_steps)
        if key not in self.runs:
            planned = PlannedRun(
                candidate_index=len(self.runs),
                config_fingerprint=fingerprint("lira-reference", self.config, self.dp, key),
                config={**self.config.to_params(), **self.dp.to_params(), "role": "LiRA reference models"},
                accountant=self.dp.accountant,
                target_epsilon=self.dp.target_epsilon,
                target_delta=self.dp.target_delta,
                noise_multiplier=plan.noise_multiplier,
                noise_multiplier_applied=plan.noise_multiplier_applied,
                sample_rate=plan.sample_rate,
                planned_steps=plan.planned_steps,
                epsilon_planned=plan.epsilon_charged_planned,
            )
            reservation = self.ledger.reserve(
                self.scope,
                [planned],
                self.lifetime,
                request_key=fingerprint(self.request_key, key),
                dagster_run_id=self.dagster_run_id,
            )
            run_id = reservation.run_ids[0]
            self.ledger.pre_charge(run_id, steps=plan.planned_steps, epsilon=plan.epsilon_charged_planned)
            self.runs[key] = (reservation.request_id, run_id, plan.epsilon_charged_planned)
        self.trained += 1
        return train_dp(split, self.config, self.dp)

    def settle(self) -> list[str]:
        """Close every reservation at what it was pre-charged (the full plan); returns the ledger run ids."""
        for (_, _, steps), (request_id, run_id, epsilon) in self.runs.items():
            self.ledger.complete_run(run_id, steps=steps, epsilon=epsilon)
            self.ledger.finish_request(request_id, selected_run_id=run_id)
        return [run_id for _, run_id, _ in self.runs.values()]

    def fail(self, error: BaseException) -> None:
        """The attack stopped: the reservations keep counting everything they were pre-charged."""
        for request_id, run_id, _ in self.runs.values():
            self.ledger.fail_run(run_id, f"{type(error).__name__}: {error}")
            self.ledger.finish_request(request_id, selected_run_id=None, status="failed")

    def to_dict(self) -> dict[str, Any]:
        return {"reference_models_trained": self.trained, "ledger_runs": [r for _, r, _ in self.runs.values()]}
