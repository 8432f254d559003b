"""The white-box audit of a subject-unit model, reserved through the per-subject filter like ``dp_model``.

With ``privacy.privacy_unit: subject`` the model is trained by the user-level trainer, so the audit runs that
trainer (:func:`ppml.evaluation.audit_whitebox.run_whitebox_audit` with ``subjects``: every canary a one-record
subject, the rate over subjects). The audit run trains on real people's records and its bound is released, so
it is a DP release about them: it is reserved through :class:`ppml.ledger.subjects.SubjectAccounts` for exactly
the people in it, in this order --

1. choose the audit's people (a seeded sample of the window's subjects, whole people, at most
   ``max_base_records`` records in all);
2. reserve the audit run for them: anyone whose composed epsilon plus the run's would pass the lifetime budget
   is excluded (and left out of the run), the run refused when fewer than ``min_eligible`` remain;
3. run the audit on the eligible people's records; the run is pre-charged per epoch and completed, or failed
   keeping its pre-charge.

Only the sampled people are charged (the others are not in the run); the canaries are not people. The audit's
plan is computed before the reservation and checked again by the run itself (the rate stays 1/2 and the noise is
calibrated for it whoever is excluded): a mismatch fails the run, so the reserved charge is the one trained.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ppml.errors import input_error
from ppml.evaluation.audit_whitebox import WhiteBoxResult, WhiteBoxSettings, run_whitebox_audit
from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.ledger.spend import LedgerSpendSink
from ppml.ledger.subjects import SubjectAccounts
from ppml.training.config import DPConfig, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_steps import StepHook
from ppml.training.models import build_model
from ppml.training.planning import planned_run
from ppml.training.subject_budget import row_pseudonyms
from ppml.training.user_level import describe, plan_user_level, train_user_level

SOURCE = "subject-unit audit"


def audit_people(names: np.ndarray, max_records: int | None, seed: int) -> list[str]:
    """A seeded sample of whole people whose records together stay within ``max_records`` (all when None)."""
    people, counts = np.unique(names, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(people))
    if max_records is None:
        return sorted(people.tolist())
    within = np.cumsum(counts[order]) <= max_records
    return sorted(people[order][within].tolist())


def audit_plan(n_people: int, n_features: int, n_classes: int, config: TrainingConfig, dp: DPConfig, settings):  # type: ignore[no-untyped-def]
    """The audit run's config and user-level plan, as ``run_whitebox_audit`` will set them up for these people."""
    parameters = sum(p.numel() for p in build_model(config.model, n_features, n_classes).parameters())
    units = n_people + min(settings.n_canaries, parameters)
    batch = max(1, math.ceil(settings.sample_rate * units))
    audit_config = dataclasses.replace(config, epochs=settings.epochs, batch_size=batch, device="cpu")
    return audit_config, plan_user_level(units, audit_config, dp)


@dataclasses.dataclass
class _ChargedUserLevelRun:
    """``train_fn`` for the subject-unit audit: the reserved run, checked against its plan, charged per epoch."""

    ledger: PrivacyLedger
    run_id: str
    plan: Any

    def __call__(
        self, split: TabularSplit, config: TrainingConfig, dp: DPConfig, *, step_hook: StepHook, subjects: np.ndarray
    ) -> Any:
        actual = plan_user_level(int(subjects.max()) + 1, config, dp)
        reserved = (self.plan.noise_multiplier, self.plan.sample_rate, self.plan.planned_steps)
        if (actual.noise_multiplier, actual.sample_rate, actual.planned_steps) != reserved:
            raise input_error(SOURCE, "plan", f"the run's plan {actual} differs from the reserved one", "report this")
        model = train_user_level(
            split,
            subjects,
            config,
            dp,
            plan=actual,
            spend_sink=LedgerSpendSink(self.ledger, self.run_id),
            step_hook=step_hook,
        )
        self.ledger.complete_run(self.run_id, steps=model.steps, epsilon=float(model.epsilon_charged or 0.0))
        return model


def audit_subjects_within_budget(
    train: TabularSplit,
    pseudonyms: Sequence[str] | np.ndarray,
    config: TrainingConfig,
    dp: DPConfig,
    settings: WhiteBoxSettings,
    *,
    ledger: PrivacyLedger,
    scope: DataScope,
    lifetime: LifetimeBudget,
    min_eligible: int,
    record_unit_group_size: int,
    request_key: str,
    dagster_run_id: str | None = None,
) -> tuple[WhiteBoxResult, dict[str, Any]]:
    """The user-level white-box audit on the people who still have budget; returns the result and the charge."""
    names = row_pseudonyms(train, pseudonyms)
    people = audit_people(names, settings.max_base_records, settings.seed)
    audit_config, plan = audit_plan(len(people), train.n_features, train.n_classes, config, dp, settings)
    chosen = train.subset(np.flatnonzero(np.isin(names, people)))
    reservation = SubjectAccounts(ledger).reserve(
        scope,
        [planned_run(0, chosen, audit_config, dp, plan, described={**describe(plan), "role": "white-box audit"})],
        lifetime,
        people,
        min_eligible=min(min_eligible, len(people)),
        request_key=request_key,
        record_unit_group_size=record_unit_group_size,
        dagster_run_id=dagster_run_id,
    )
    rows = np.flatnonzero(np.isin(names, np.asarray(reservation.eligible)))
    run_id = reservation.run_ids[0]
    charged = _ChargedUserLevelRun(ledger, run_id, plan)
    try:
        result = run_whitebox_audit(
            train.subset(rows),
            config,
            dp,
            settings=dataclasses.replace(settings, max_base_records=None),
            train_fn=charged,
            subjects=names[rows],
        )
    except BaseException as error:
        ledger.fail_run(run_id, f"{type(error).__name__}: {error}")
        ledger.finish_request(reservation.request_id, selected_run_id=None, status="failed", message=str(error)[:2000])
        raise
    ledger.finish_request(reservation.request_id, selected_run_id=run_id)
    charge = {
        "ledger_run": run_id,
        "people_in_audit": len(reservation.eligible),
        "excluded": reservation.excluded,
        "records": len(rows),
    }
    return result, charge
