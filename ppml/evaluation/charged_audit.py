"""The white-box audit's training run, charged to the lifetime ledger like any other DP training.

The audit run trains on real records (the base records of the canary split), so its release -- the audit's
verdict -- is a DP release on those people: it goes through the ledger's reservation path (reserved or refused
over budget, pre-charged before its first step, completed with the epsilon of the noise it added; a failed run
keeps its pre-charge). Used by the central ``privacy_audit`` asset and by each site's audit of a federated run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.ledger.spend import LedgerSpendSink
from ppml.training.config import DPConfig, TrainingConfig, fingerprint
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import train_dp
from ppml.training.planning import plan_dp_training, planned_run
from ppml.training.trained_model import TrainedModel


@dataclass
class ChargedAuditTraining:
    """``train_fn`` of :func:`ppml.evaluation.audit_whitebox.run_whitebox_audit` that charges ``scope``.

    ``purpose`` names the run in the ledger and keys its request (with the scope, the records and the configs).
    ``run_ids`` collects the ledger runs it opened, so a caller can show which charge belongs to which audit."""

    ledger: PrivacyLedger
    scope: DataScope
    lifetime: LifetimeBudget
    dagster_run_id: str | None = None
    purpose: str = "white-box audit"
    run_ids: list[str] = field(default_factory=list)

    def __call__(
        self, split: TabularSplit, audit_config: TrainingConfig, dp: DPConfig, *, step_hook: Any
    ) -> TrainedModel:
        plan = plan_dp_training(split.n, audit_config, dp)
        planned = planned_run(0, split, audit_config, dp, plan, described={"purpose": self.purpose})
        key = fingerprint(self.purpose, self.scope, split.record_set_hash(), audit_config, dp, self.dagster_run_id)
        reservation = self.ledger.reserve(
            self.scope, [planned], self.lifetime, request_key=key, dagster_run_id=self.dagster_run_id
        )
        run_id = reservation.run_ids[0]
        self.run_ids.append(run_id)
        try:
            model = train_dp(
                split, audit_config, dp, spend_sink=LedgerSpendSink(self.ledger, run_id), step_hook=step_hook
            )
        except BaseException as error:
            self.ledger.fail_run(run_id, f"{type(error).__name__}: {error}"[:2000])
            self.ledger.finish_request(reservation.request_id, selected_run_id=None, status="failed")
            raise
        self.ledger.complete_run(run_id, steps=model.steps, epsilon=float(model.epsilon_charged or 0.0))
        self.ledger.finish_request(reservation.request_id, selected_run_id=run_id)
        return model
