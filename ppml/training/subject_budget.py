"""Accountable training when the privacy unit is the data subject (``privacy.privacy_unit: subject``).

The subject-level counterpart of :func:`ppml.training.accountable.train_within_budget`, in order:

1. plan user-level DP-SGD for the window's subjects (:func:`ppml.training.user_level.plan_user_level`);
2. **reserve** every candidate through the per-subject filter (:class:`ppml.ledger.subjects.SubjectAccounts`):
   subjects whose composed epsilon plus this request's would pass the lifetime budget are excluded and counted;
   the request is refused only when fewer than ``min_eligible`` subjects remain;
3. train each candidate on the eligible subjects only, pre-charging every epoch before it runs;
4. select on validation accuracy; every candidate stays charged.

A killed run keeps what it was pre-charged (never under-counted); a rerun makes a new request rather than
resuming (it pays again: an over-count, never an under-count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ppml.errors import input_error
from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.ledger.spend import LedgerSpendSink
from ppml.ledger.subjects import SubjectAccounts, SubjectReservation
from ppml.training.config import DPConfig, TrainingConfig
from ppml.training.contribution import subject_index
from ppml.training.data import TabularSplit
from ppml.training.planning import planned_run
from ppml.training.trained_model import TrainedModel
from ppml.training.user_level import describe, plan_user_level, train_user_level


@dataclass
class SubjectTrainingResult:
    """The selected user-level model and the per-subject bookkeeping around it (aggregates only)."""

    model: TrainedModel
    selected_index: int
    validation_accuracies: list[float]
    reservation: SubjectReservation
    ledger_run_id: str
    subjects_trained: int
    records_trained: int
    accounts: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_metadata(self) -> dict[str, Any]:
        return {
            "privacy_unit": "subject",
            "epsilon_per_person": self.model.epsilon,
            "delta": self.model.delta,
            "selected_index": self.selected_index,
            "validation_accuracies": self.validation_accuracies,
            "ledger_run_id": self.ledger_run_id,
            "subjects_trained": self.subjects_trained,
            "records_trained": self.records_trained,
            **self.reservation.to_dict(),
            "subject_accounts": self.accounts,
            "notes": self.notes,
        }


def row_pseudonyms(train: TabularSplit, pseudonyms: Sequence[str] | np.ndarray) -> np.ndarray:
    """The pseudonyms as strings, one per row of ``train`` (a one-line error otherwise)."""
    names = np.asarray(pseudonyms).astype(str)
    if names.shape != (train.n,):
        raise input_error(
            train.name, "subjects", f"{names.shape} pseudonyms for {train.n} rows", "pass one per training row"
        )
    return names


def train_subjects_within_budget(
    train: TabularSplit,
    pseudonyms: Sequence[str] | np.ndarray,
    validation: TabularSplit,
    candidates: Sequence[TrainingConfig],
    dp: DPConfig,
    *,
    ledger: PrivacyLedger,
    scope: DataScope,
    lifetime: LifetimeBudget,
    min_eligible: int,
    record_unit_group_size: int,
    request_key: str,
    dagster_run_id: str | None = None,
) -> SubjectTrainingResult:
    """Train user-level DP candidates on the subjects that still have budget; refuse when too few remain."""
    names = row_pseudonyms(train, pseudonyms)
    if not candidates or validation.n == 0:
        raise input_error("training request", "candidates", "nothing to train or validate", "pass both")
    unique = sorted(set(names.tolist()))
    dp.check_delta_for(len(unique), train.name)  # per person: delta below 1 / (number of subjects)
    plans = [plan_user_level(len(unique), config, dp) for config in candidates]
    planned = [
        planned_run(i, train, config, dp, plan, described=describe(plan))
        for i, (config, plan) in enumerate(zip(candidates, plans, strict=True))
    ]
    accounts = SubjectAccounts(ledger)
    reservation = accounts.reserve(
        scope,
        planned,
        lifetime,
        unique,
        min_eligible=min_eligible,
        request_key=request_key,
        record_unit_group_size=record_unit_group_size,
        dagster_run_id=dagster_run_id,
    )
    rows = np.flatnonzero(np.isin(names, np.asarray(reservation.eligible)))
    subset = train.subset(rows)
    codes, _ = subject_index(names[rows])
    models: list[TrainedModel] = []
    try:
        for config, plan, run_id in zip(candidates, plans, reservation.run_ids, strict=True):
            models.append(_train_one(ledger, run_id, subset, codes, config, dp, plan, validation))
    except BaseException as error:
        ledger.finish_request(reservation.request_id, selected_run_id=None, status="failed", message=str(error)[:2000])
        raise
    accuracies = [float(m.evaluate(validation)["accuracy"]) for m in models]
    best = int(np.argmax(accuracies))
    ledger.finish_request(reservation.request_id, selected_run_id=reservation.run_ids[best])
    summary = accounts.summary(scope.dataset, lifetime, record_unit_group_size=record_unit_group_size)
    notes = [
        f"{reservation.excluded} subject(s) excluded: their composed epsilon plus this request's would pass the "
        f"lifetime budget {lifetime.epsilon:g}"
    ]
    return SubjectTrainingResult(
        model=models[best],
        selected_index=best,
        validation_accuracies=accuracies,
        reservation=reservation,
        ledger_run_id=reservation.run_ids[best],
        subjects_trained=len(reservation.eligible),
        records_trained=len(rows),
        accounts=summary,
        notes=notes if reservation.excluded else [],
    )


def _train_one(
    ledger: PrivacyLedger,
    run_id: str,
    subset: TabularSplit,
    codes: np.ndarray,
    config: TrainingConfig,
    dp: DPConfig,
    plan: Any,
    validation: TabularSplit,
) -> TrainedModel:
    """One candidate in its ledger row: pre-charged per epoch, then completed -- or failed, keeping its charge."""
    try:
        model = train_user_level(
            subset, codes, config, dp, plan=plan, validation=validation, spend_sink=LedgerSpendSink(ledger, run_id)
        )
    except BaseException as error:
        ledger.fail_run(run_id, f"{type(error).__name__}: {error}")
        raise
    ledger.complete_run(run_id, steps=model.steps, epsilon=float(model.epsilon_charged or 0.0))
    return model
