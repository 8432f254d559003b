"""The ledger's records: data scopes, lifetime budgets, planned and stored runs, reservations and refusals.

Plain values (no database access), shared by every part of the ledger and by its callers.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ppml.errors import PPMLError, input_error
from ppml.ledger.composition import PURE_DP, SUBSAMPLED_GAUSSIAN, Charge, Composition

#: Status of a run while it may still spend: it is charged at its full planned spend.
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
ABANDONED = "abandoned"
REFUSED = "refused"
#: A different host's run with no heartbeat for this long is presumed dead and may be taken over.
DEFAULT_STALE_AFTER_S = 1800.0
#: Run kinds that spend privacy: DP-SGD runs and pure epsilon-DP releases (e.g. the OpenDP summary).
CHARGED_KINDS = {"dp": SUBSAMPLED_GAUSSIAN, PURE_DP: PURE_DP}
#: ``ppml_ledger_datasets.scope_kind``: keyed by a policy's data-set identity, or (before 0002) by a policy name.
SCOPE_DATASET_ID = "dataset_id"
SCOPE_POLICY_NAME = "policy_name"


@dataclass(frozen=True)
class DataScope:
    """The data a training run touches.

    ``partitions`` are the data set's partition keys the run reads (empty: the whole data set).
    ``partitions_disjoint`` declares that no individual appears in two partitions (e.g. partitioned by person or
    by region of residence); only then is the budget kept per partition (parallel composition). Time partitions
    of event data are *not* disjoint -- the same person appears every week -- so the default composes every run
    on the data set.
    """

    dataset: str
    partitions: tuple[str, ...] = ()
    record_set_hash: str = ""
    partitions_disjoint: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "partitions", tuple(sorted({str(p) for p in self.partitions})))
        if not self.dataset or len(self.dataset) > 200:
            raise input_error(
                "data scope",
                "dataset",
                f"invalid data set name {self.dataset!r}",
                "name the data set (1-200 characters)",
            )


@dataclass(frozen=True)
class LifetimeBudget:
    """The policy's lifetime budget per individual: (epsilon, delta) over all runs, ever."""

    epsilon: float
    delta: float
    warn_fraction: float = 0.8

    def __post_init__(self) -> None:
        if not (isinstance(self.epsilon, int | float) and math.isfinite(self.epsilon) and self.epsilon > 0):
            raise input_error(
                "policy",
                "lifetime_epsilon",
                f"must be a finite number > 0, got {self.epsilon!r}",
                "set the lifetime privacy budget, e.g. 4.0",
            )
        if not (isinstance(self.delta, int | float) and 0 < self.delta < 1):
            raise input_error(
                "policy", "lifetime_delta", f"must be in (0, 1), got {self.delta!r}", "set a lifetime delta below 1/n"
            )
        if not 0 < self.warn_fraction <= 1:
            raise input_error("policy", "warn_fraction", f"must be in (0, 1], got {self.warn_fraction!r}", "e.g. 0.8")


@dataclass(frozen=True)
class PlannedRun:
    """A DP run's spend, known before it starts (from ppml.training.plan_dp_training)."""

    candidate_index: int
    config_fingerprint: str
    config: Mapping[str, Any]
    accountant: str
    target_epsilon: float
    target_delta: float
    noise_multiplier: float
    noise_multiplier_applied: float
    sample_rate: float
    planned_steps: int
    epsilon_planned: float  # epsilon of the applied noise over planned_steps, at target_delta
    mechanism: str = SUBSAMPLED_GAUSSIAN

    @classmethod
    def pure_dp(cls, epsilon: float, *, config: Mapping[str, Any], label: str) -> PlannedRun:
        """A pure epsilon-DP release (delta 0, one 'step'), reserved and settled like a DP-SGD run."""
        if not (isinstance(epsilon, int | float) and math.isfinite(epsilon) and epsilon > 0):
            raise input_error(label, "epsilon", f"must be a finite number > 0, got {epsilon!r}", "set e.g. 0.5")
        canonical = json.dumps({"release": label, **dict(config)}, sort_keys=True, default=str)
        return cls(
            candidate_index=0,
            config_fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
            config={"release": label, **dict(config)},
            accountant="pure",
            target_epsilon=float(epsilon),
            target_delta=0.0,
            noise_multiplier=0.0,
            noise_multiplier_applied=0.0,
            sample_rate=0.0,
            planned_steps=1,
            epsilon_planned=float(epsilon),
            mechanism=PURE_DP,
        )

    @property
    def kind(self) -> str:
        return PURE_DP if self.mechanism == PURE_DP else "dp"

    def charge(self) -> Charge:
        if self.mechanism == PURE_DP:
            return Charge.pure(self.epsilon_planned)
        return Charge(
            self.noise_multiplier_applied, self.sample_rate, self.planned_steps, self.epsilon_planned, self.target_delta
        )


@dataclass(frozen=True)
class LedgerRun:
    """One row of the ledger."""

    id: str
    request_id: str | None
    dataset: str
    partitions: tuple[str, ...]
    record_set_hash: str
    candidate_index: int
    config_fingerprint: str
    config: dict[str, Any]
    kind: str
    status: str
    accountant: str | None
    target_epsilon: float | None
    target_delta: float | None
    noise_multiplier: float | None
    noise_multiplier_applied: float | None
    sample_rate: float | None
    planned_steps: int
    steps_charged: int
    steps_completed: int
    epsilon_planned: float | None
    epsilon_charged: float | None
    epsilon_spent: float | None
    mlflow_run_id: str | None
    dagster_run_id: str | None
    owner: str | None
    heartbeat_unix: float | None
    message: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    privacy_unit: str | None = None  # "subject" for user-level runs (0003); None = record

    def charge(self) -> Charge | None:
        """What this run counts against the budget: its full plan while it may still run, else what was charged."""
        if self.kind not in CHARGED_KINDS or self.status == REFUSED:
            return None
        if self.status == RUNNING:
            steps, epsilon = self.planned_steps, self.epsilon_planned
        else:
            steps, epsilon = self.steps_charged, self.epsilon_charged
        if not steps:
            return None
        if self.kind == PURE_DP:
            return Charge.pure(float(epsilon if epsilon is not None else math.inf))
        return Charge(
            float(self.noise_multiplier_applied or 0.0),
            float(self.sample_rate or 0.0),
            int(steps),
            float(epsilon if epsilon is not None else math.inf),
            float(self.target_delta or 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("created_at", "updated_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


@dataclass(frozen=True)
class Reservation:
    """The ledger's answer to a budget request that fits."""

    request_id: str
    run_ids: tuple[str, ...]
    spent_before: Composition
    requested: Composition
    projected: Composition
    limit: LifetimeBudget
    partition: str | None


class BudgetExceededError(PPMLError):
    """Training refused: it would push the lifetime budget of some individual past the policy's limit."""

    def __init__(
        self,
        message: str,
        *,
        spent: Composition,
        requested: Composition,
        projected: Composition,
        limit: LifetimeBudget,
        dataset: str,
        partition: str | None,
    ) -> None:
        super().__init__(message)
        self.spent, self.requested, self.projected, self.limit = spent, requested, projected, limit
        self.dataset, self.partition = dataset, partition


@dataclass(frozen=True)
class BudgetStatus:
    """Remaining budget of one scope (a data set, or one partition of a data set with disjoint partitions)."""

    dataset: str
    partition: str | None
    spent: Composition
    limit_epsilon: float
    limit_delta: float
    remaining_epsilon: float
    fraction_used: float
    warning: bool
    exhausted: bool
    runs: int
    running: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["spent"] = self.spent.to_dict()
        return data


@dataclass
class Projection:
    """Spent and projected composition on the most exposed individuals of a scope (one partition, or all)."""

    spent: Composition
    projected: Composition
    requested: Composition
    partition: str | None
    per_partition: dict[str | None, Composition] = field(default_factory=dict)


def touches(run: LedgerRun, key: str | None) -> bool:
    """Does ``run`` read partition ``key`` (None: the whole data set; a run without partitions reads all)?"""
    return key is None or not run.partitions or key in run.partitions


def with_status(run: LedgerRun, status: str) -> LedgerRun:
    return replace(run, status=status)


def to_run(row: Mapping[str, Any]) -> LedgerRun:
    data = dict(row)
    data["partitions"] = tuple(json.loads(data["partitions"] or "[]"))
    data["config"] = json.loads(data["config"] or "{}")
    for key in ("created_at", "updated_at", "finished_at"):
        if data[key] is not None and data[key].tzinfo is None:
            data[key] = data[key].replace(tzinfo=UTC)
    return LedgerRun(**data)


def utc_now() -> datetime:
    """Timestamps are stored in UTC."""
    return datetime.now(UTC)


def refusal_message(scope: DataScope, projection: Projection, lifetime: LifetimeBudget, runs_requested: int) -> str:
    where = f"data set {scope.dataset!r}" + (f" partition {projection.partition!r}" if projection.partition else "")
    return (
        f"privacy ledger: field 'lifetime_epsilon': training refused for {where}: spent epsilon "
        f"{projection.spent.epsilon:.4g}, requested epsilon {projection.requested.epsilon:.4g} "
        f"({runs_requested} run(s)), together {projection.projected.epsilon:.4g} ({projection.projected.method} "
        f"composition) > limit {lifetime.epsilon:.4g} at delta {lifetime.delta:g}; fix: wait for new data "
        "outside this scope, lower the per-run epsilon or the number of candidates, or raise the policy's "
        "lifetime budget with the data protection officer's approval"
    )
