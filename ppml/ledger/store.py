"""The persistent privacy-budget ledger.

Invariants, in order of importance:

* **Never under-count.** A run is *reserved* at its full planned spend before its first step; while it runs, each
  segment of steps is *pre-charged* (written and committed) before the steps execute; a run that dies keeps the
  pre-charged amount. Steps are never un-charged.
* **Never lose an update.** Every budget decision (reserve, take over a crashed run) runs in one transaction that
  first locks the data set's row (``SELECT ... FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite), so
  two trainings deciding at the same time are serialised and the second sees the first's reservation. Progress
  writes are single-row monotone updates (``steps = max(steps, new)``).
* **No double count.** A resumed run continues its own ledger row; the checkpoint restores the sampler and noise
  generators, so the replayed steps are the same mechanism output, not a second draw.

The ledger stores aggregates only: data set and partition names, a record-set hash, hyper-parameters, epsilon,
delta and step counts -- never records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ppml.errors import PPMLError, input_error
from ppml.ledger.composition import PURE_DP, SUBSAMPLED_GAUSSIAN, Charge, Composition, compose
from ppml.ledger.schema import VERSION_TABLE, datasets, events, requests, runs

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
_MIGRATION_LOCK_ID = 0x7070_6D6C_6C65_6467 & 0x7FFF_FFFF_FFFF_FFFF  # pg_advisory_xact_lock key ("ppmlledg")


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
class _Projection:
    spent: Composition
    projected: Composition
    requested: Composition
    partition: str | None
    per_partition: dict[str | None, Composition] = field(default_factory=dict)


class PrivacyLedger:
    """Lifetime privacy accounting in a SQL database (SQLite file or the Dagster instance's PostgreSQL).

    ``url`` is a SQLAlchemy URL; use ``postgresql+psycopg2://...`` for PostgreSQL. Tables are created or upgraded
    by the bundled Alembic migrations on construction (``migrate=False`` to skip).
    """

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = _create_engine(url)
        self._postgres = self.engine.dialect.name == "postgresql"
        if migrate:
            self.migrate()

    @classmethod
    def beside_dagster_instance(cls, dagster_home: Path) -> PrivacyLedger:
        """The embedded default: a SQLite file next to the Dagster instance's SQLite storage."""
        Path(dagster_home).mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{Path(dagster_home).resolve() / 'privacy_ledger.db'}")

    def close(self) -> None:
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"PrivacyLedger({sa.engine.make_url(self.url).render_as_string(hide_password=True)})"

    # ------------------------------------------------------------------------------------------------- schema

    def migrate(self) -> None:
        """Upgrade the ledger tables to the newest bundled revision; concurrent callers are serialised."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(resources.files("ppml.ledger") / "migrations"))
        config.set_main_option("version_table", VERSION_TABLE)
        with self.engine.begin() as connection:
            if self._postgres:
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    # ------------------------------------------------------------------------------------- budget decisions

    def reserve(
        self,
        scope: DataScope,
        planned: Sequence[PlannedRun],
        lifetime: LifetimeBudget,
        *,
        request_key: str,
        dagster_run_id: str | None = None,
    ) -> Reservation:
        """Reserve the planned runs' full spend, or refuse when the lifetime budget would be exceeded.

        Refusals are recorded too (request and runs with status ``refused``, zero charge) before the
        :class:`BudgetExceededError` is raised, so the ledger shows every attempt.
        """
        if not planned:
            raise input_error("ledger", "candidates", "nothing to reserve", "pass at least one planned run")
        now = _now()
        with self._locked(scope) as connection:
            existing = self._runs(connection, scope.dataset)
            projection = self._project(existing, scope, [p.charge() for p in planned], lifetime.delta)
            request_id = str(uuid.uuid4())
            exceeded = projection.projected.epsilon > lifetime.epsilon * (1 + 1e-12)
            status = REFUSED if exceeded else RUNNING
            connection.execute(
                requests.insert().values(
                    id=request_id,
                    dataset=scope.dataset,
                    request_key=request_key,
                    status=status,
                    candidates=len(planned),
                    dagster_run_id=dagster_run_id,
                    created_at=now,
                    updated_at=now,
                    message=None,
                )
            )
            run_ids = tuple(
                self._insert_planned(connection, scope, request_id, p, status, dagster_run_id, now) for p in planned
            )
            if exceeded:
                message = _refusal_message(scope, projection, lifetime, len(planned))
                connection.execute(requests.update().where(requests.c.id == request_id).values(message=message))
                self._event(
                    connection,
                    scope.dataset,
                    None,
                    REFUSED,
                    None,
                    projection.requested.epsilon,
                    dagster_run_id,
                    message,
                )
        if exceeded:
            raise BudgetExceededError(
                message,
                spent=projection.spent,
                requested=projection.requested,
                projected=projection.projected,
                limit=lifetime,
                dataset=scope.dataset,
                partition=projection.partition,
            )
        return Reservation(
            request_id,
            run_ids,
            projection.spent,
            projection.requested,
            projection.projected,
            lifetime,
            projection.partition,
        )

    def open_request(self, dataset: str, request_key: str) -> tuple[str, list[LedgerRun]] | None:
        """The newest unfinished request with this key (a crashed or failed training to resume), if any."""
        with self.engine.connect() as connection:
            row = connection.execute(
                sa.select(requests.c.id)
                .where(
                    requests.c.dataset == dataset,
                    requests.c.request_key == request_key,
                    requests.c.status.in_([RUNNING, FAILED]),
                )
                .order_by(requests.c.created_at.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            request_runs = [r for r in self._runs(connection, dataset) if r.request_id == row.id]
        return row.id, sorted(request_runs, key=lambda r: r.candidate_index)

    def take_over(
        self,
        request_id: str,
        scope: DataScope,
        lifetime: LifetimeBudget,
        *,
        resume: Sequence[str] = (),
        replace: Mapping[str, PlannedRun] | None = None,
        dagster_run_id: str | None = None,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> Reservation:
        """Continue an interrupted request: ``resume`` runs continue from their checkpoints (same ledger rows);
        runs in ``replace`` had no usable checkpoint and are abandoned (keeping what they were charged) in favour
        of a fresh planned run. Refused if a run is still owned by a live process, or if the budget is exceeded."""
        replace = dict(replace or {})
        now = _now()
        with self._locked(scope) as connection:
            existing = self._runs(connection, scope.dataset)
            by_id = {r.id: r for r in existing}
            touched = [*resume, *replace]
            for run_id in touched:
                run = by_id.get(run_id)
                if run is None or run.request_id != request_id:
                    raise PPMLError(
                        f"ledger: field 'run_id': {run_id} is not a run of request {request_id}; "
                        "fix: resume the request the run belongs to"
                    )
                if run.status == RUNNING and _owner_alive(run.owner, run.heartbeat_unix, stale_after_s):
                    raise PPMLError(
                        f"ledger: field 'owner': run {run_id} is still being trained by {run.owner}; fix: wait for "
                        "that training to finish or stop it before re-materializing"
                    )
                if run.status in (COMPLETED, REFUSED):
                    raise PPMLError(
                        f"ledger: field 'status': run {run_id} is {run.status} and cannot be resumed; "
                        "fix: start a new training request"
                    )
            # What the request will count once taken over: resumed runs at their full plan again, abandoned runs at
            # what they were charged, replacements at their plan.
            after = [
                _with_status(r, RUNNING) if r.id in resume else (_with_status(r, ABANDONED) if r.id in replace else r)
                for r in existing
            ]
            added = [p.charge() for p in replace.values()]
            projection = self._project(after, scope, added, lifetime.delta)
            before = self._project(existing, scope, [], lifetime.delta)
            projection.spent = before.spent
            if projection.projected.epsilon > lifetime.epsilon * (1 + 1e-12):
                message = _refusal_message(scope, projection, lifetime, len(touched))
                self._event(
                    connection,
                    scope.dataset,
                    None,
                    REFUSED,
                    None,
                    projection.requested.epsilon,
                    dagster_run_id,
                    message,
                )
                refusal = BudgetExceededError(
                    message,
                    spent=projection.spent,
                    requested=projection.requested,
                    projected=projection.projected,
                    limit=lifetime,
                    dataset=scope.dataset,
                    partition=projection.partition,
                )
            else:
                refusal = None
                owner = _this_owner()
                for run_id in resume:
                    connection.execute(
                        runs.update()
                        .where(runs.c.id == run_id)
                        .values(
                            status=RUNNING,
                            owner=owner,
                            heartbeat_unix=time.time(),
                            dagster_run_id=dagster_run_id,
                            updated_at=now,
                            finished_at=None,
                            message=None,
                        )
                    )
                    self._event(
                        connection,
                        scope.dataset,
                        run_id,
                        "resumed",
                        by_id[run_id].steps_charged,
                        by_id[run_id].epsilon_charged,
                        dagster_run_id,
                        f"taken over by {owner}",
                    )
                new_ids = []
                for run_id, plan in replace.items():
                    connection.execute(
                        runs.update()
                        .where(runs.c.id == run_id)
                        .values(
                            status=ABANDONED,
                            updated_at=now,
                            finished_at=now,
                            message="no checkpoint to resume from; charged what it may have spent",
                        )
                    )
                    self._event(
                        connection,
                        scope.dataset,
                        run_id,
                        ABANDONED,
                        by_id[run_id].steps_charged,
                        by_id[run_id].epsilon_charged,
                        dagster_run_id,
                        "replaced by a fresh run",
                    )
                    new_ids.append(
                        self._insert_planned(connection, scope, request_id, plan, RUNNING, dagster_run_id, now)
                    )
                connection.execute(
                    requests.update()
                    .where(requests.c.id == request_id)
                    .values(status=RUNNING, dagster_run_id=dagster_run_id, updated_at=now)
                )
        if refusal is not None:
            raise refusal
        return Reservation(
            request_id,
            (*resume, *new_ids),
            projection.spent,
            projection.requested,
            projection.projected,
            lifetime,
            projection.partition,
        )

    # ------------------------------------------------------------------------------------- progress writes

    def pre_charge(self, run_id: str, *, steps: int, epsilon: float) -> None:
        """Record, before they run, that up to ``steps`` steps (``epsilon``) may be spent. Monotone; refuses a
        process that no longer owns the run (another process took it over), so it stops instead of double-spending."""
        now = _now()
        with self.engine.begin() as connection:
            result = connection.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == RUNNING, runs.c.owner == _this_owner())
                .values(
                    steps_charged=_greatest(runs.c.steps_charged, steps),
                    epsilon_charged=_greatest(runs.c.epsilon_charged, float(epsilon)),
                    heartbeat_unix=time.time(),
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                raise PPMLError(
                    f"ledger: field 'owner': run {run_id} is no longer running under this process; "
                    "fix: another process took it over -- stop this training"
                )
            dataset = connection.execute(sa.select(runs.c.dataset).where(runs.c.id == run_id)).scalar_one()
            self._event(connection, dataset, run_id, "pre_charge", steps, epsilon, None, None)

    def record_progress(self, run_id: str, *, steps: int, epsilon: float) -> None:
        """Steps finished and checkpointed (monotone)."""
        now = _now()
        with self.engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    steps_completed=_greatest(runs.c.steps_completed, steps),
                    epsilon_spent=_greatest(runs.c.epsilon_spent, float(epsilon)),
                    heartbeat_unix=time.time(),
                    updated_at=now,
                )
            )

    def complete_run(self, run_id: str, *, steps: int, epsilon: float, mlflow_run_id: str | None = None) -> None:
        now = _now()
        with self.engine.begin() as connection:
            values: dict[str, Any] = {
                "status": COMPLETED,
                "steps_completed": _greatest(runs.c.steps_completed, steps),
                "steps_charged": _greatest(runs.c.steps_charged, steps),
                "epsilon_spent": _greatest(runs.c.epsilon_spent, float(epsilon)),
                "epsilon_charged": _greatest(runs.c.epsilon_charged, float(epsilon)),
                "updated_at": now,
                "finished_at": now,
                "heartbeat_unix": time.time(),
            }
            if mlflow_run_id:
                values["mlflow_run_id"] = mlflow_run_id
            connection.execute(runs.update().where(runs.c.id == run_id).values(**values))
            dataset = connection.execute(sa.select(runs.c.dataset).where(runs.c.id == run_id)).scalar_one()
            self._event(connection, dataset, run_id, COMPLETED, steps, epsilon, None, None)

    def fail_run(self, run_id: str, message: str) -> None:
        """The run stopped with an error: it keeps counting everything it was pre-charged."""
        now = _now()
        with self.engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == RUNNING)
                .values(status=FAILED, message=message[:2000], updated_at=now, finished_at=now)
            )
            dataset = connection.execute(sa.select(runs.c.dataset).where(runs.c.id == run_id)).scalar_one_or_none()
            if dataset is not None:
                self._event(connection, dataset, run_id, FAILED, None, None, None, message[:2000])

    def set_mlflow_run(self, run_id: str, mlflow_run_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(runs.update().where(runs.c.id == run_id).values(mlflow_run_id=mlflow_run_id))

    def set_request_mlflow_run(self, request_id: str, mlflow_run_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(requests.update().where(requests.c.id == request_id).values(mlflow_run_id=mlflow_run_id))

    def request_mlflow_run(self, request_id: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(requests.c.mlflow_run_id).where(requests.c.id == request_id)
            ).scalar_one_or_none()

    def finish_request(
        self, request_id: str, *, selected_run_id: str | None, status: str = COMPLETED, message: str | None = None
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                requests.update()
                .where(requests.c.id == request_id)
                .values(status=status, selected_run_id=selected_run_id, message=message, updated_at=_now())
            )

    def adopt_policy_name_scope(self, policy_name: str, scope: DataScope) -> int:
        """Move a pre-0002 scope keyed by ``policy_name`` into ``scope.dataset`` (the data-set identity).

        Only scopes the 0002 migration marked as policy names are moved, once, inside the data-set identity's
        lock; moved rows keep counting, now against the people's identity. Returns the number of runs moved.
        """
        if policy_name == scope.dataset:
            return 0
        with self.engine.connect() as connection:
            legacy = connection.execute(
                sa.select(datasets.c.scope_kind).where(datasets.c.dataset == policy_name)
            ).scalar_one_or_none()
        if legacy != SCOPE_POLICY_NAME:
            return 0
        with self._locked(scope) as connection:
            legacy_row = (
                connection.execute(sa.select(datasets).where(datasets.c.dataset == policy_name).with_for_update())
                .mappings()
                .first()
            )
            if legacy_row is None or legacy_row["scope_kind"] != SCOPE_POLICY_NAME:
                return 0  # another process merged it meanwhile
            moved = connection.execute(
                runs.update().where(runs.c.dataset == policy_name).values(dataset=scope.dataset)
            ).rowcount
            connection.execute(requests.update().where(requests.c.dataset == policy_name).values(dataset=scope.dataset))
            connection.execute(events.update().where(events.c.dataset == policy_name).values(dataset=scope.dataset))
            connection.execute(
                datasets.update()
                .where(datasets.c.dataset == policy_name)
                .values(scope_kind="merged", merged_into=scope.dataset)
            )
            self._event(
                connection,
                scope.dataset,
                None,
                "scope_merged",
                None,
                None,
                None,
                f"{moved} run(s) of the policy-name scope {policy_name!r} moved into data set {scope.dataset!r}",
            )
        return int(moved)

    def record_non_private(
        self,
        scope: DataScope,
        *,
        config: Mapping[str, Any],
        config_fingerprint: str,
        steps: int,
        mlflow_run_id: str | None = None,
        dagster_run_id: str | None = None,
    ) -> str:
        """Record a non-private baseline run: listed for the audit trail, outside DP composition (it has no
        epsilon: its outputs must stay inside the trusted boundary -- tagged never-deploy, aggregates only)."""
        now = _now()
        run_id = str(uuid.uuid4())
        with self._locked(scope) as connection:
            connection.execute(
                runs.insert().values(
                    id=run_id,
                    request_id=None,
                    dataset=scope.dataset,
                    partitions=json.dumps(list(scope.partitions)),
                    record_set_hash=scope.record_set_hash,
                    candidate_index=0,
                    config_fingerprint=config_fingerprint,
                    config=json.dumps(dict(config), sort_keys=True, default=str),
                    kind="non_private",
                    status=COMPLETED,
                    planned_steps=steps,
                    steps_charged=0,
                    steps_completed=steps,
                    mlflow_run_id=mlflow_run_id,
                    dagster_run_id=dagster_run_id,
                    owner=_this_owner(),
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                )
            )
            self._event(
                connection,
                scope.dataset,
                run_id,
                "non_private",
                steps,
                None,
                dagster_run_id,
                "non-private baseline: never deploy",
            )
        return run_id

    # ------------------------------------------------------------------------------------------- reading

    def runs(self, dataset: str | None = None) -> list[LedgerRun]:
        with self.engine.connect() as connection:
            return self._runs(connection, dataset)

    def run(self, run_id: str) -> LedgerRun:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise PPMLError(f"ledger: field 'run_id': no run {run_id}; fix: check the id")
        return _to_run(row)

    def events(self, run_id: str | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(events).order_by(events.c.id)
        if run_id is not None:
            query = query.where(events.c.run_id == run_id)
        if dataset is not None:
            query = query.where(events.c.dataset == dataset)
        with self.engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]

    def spent(self, scope: DataScope, delta: float) -> Composition:
        """Composed spend on the individuals of ``scope`` (the most-spent partition when partitions are disjoint)."""
        return self._project(self.runs(scope.dataset), scope, [], delta).spent

    def budget_status(self, dataset: str, lifetime: LifetimeBudget) -> list[BudgetStatus]:
        """Remaining budget per scope: one row for the data set, or one per partition when they are disjoint."""
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(datasets).where(datasets.c.dataset == dataset)).mappings().first()
            existing = self._runs(connection, dataset)
        disjoint = bool(row["partitions_disjoint"]) if row else False
        keys: list[str | None] = sorted({p for r in existing for p in r.partitions}) if disjoint else [None]
        statuses = []
        for key in keys or [None]:
            touching = [r for r in existing if _touches(r, key)]
            spent = compose([c for r in touching if (c := r.charge())], lifetime.delta)
            fraction = spent.epsilon / lifetime.epsilon
            statuses.append(
                BudgetStatus(
                    dataset=dataset,
                    partition=key,
                    spent=spent,
                    limit_epsilon=lifetime.epsilon,
                    limit_delta=lifetime.delta,
                    remaining_epsilon=max(lifetime.epsilon - spent.epsilon, 0.0),
                    fraction_used=fraction,
                    warning=fraction >= lifetime.warn_fraction,
                    exhausted=fraction >= 1.0,
                    runs=sum(1 for r in touching if r.kind in CHARGED_KINDS and r.status != REFUSED),
                    running=sum(1 for r in touching if r.status == RUNNING),
                )
            )
        return statuses

    # ------------------------------------------------------------------------------------------- internals

    @contextlib.contextmanager
    def _locked(self, scope: DataScope) -> Iterator[Connection]:
        """A transaction holding the data set's lock row: budget decisions on one data set never interleave."""
        with self.engine.begin() as connection:
            dialect = postgresql if self._postgres else sqlite
            connection.execute(
                dialect.insert(datasets)
                .values(
                    dataset=scope.dataset,
                    partitions_disjoint=scope.partitions_disjoint,
                    created_at=_now(),
                    scope_kind=SCOPE_DATASET_ID,
                )
                .on_conflict_do_nothing(index_elements=["dataset"])
            )
            row = (
                connection.execute(sa.select(datasets).where(datasets.c.dataset == scope.dataset).with_for_update())
                .mappings()
                .one()
            )
            if row["scope_kind"] == SCOPE_POLICY_NAME:
                # a pre-0002 scope whose policy name is also this data-set identity: it is one from now on
                connection.execute(
                    datasets.update().where(datasets.c.dataset == scope.dataset).values(scope_kind=SCOPE_DATASET_ID)
                )
            if bool(row["partitions_disjoint"]) != scope.partitions_disjoint:
                raise input_error(
                    f"ledger data set {scope.dataset!r}",
                    "partitions_disjoint",
                    f"declared {scope.partitions_disjoint} but the ledger holds {bool(row['partitions_disjoint'])}",
                    "keep one declaration per data set (it decides how budgets compose)",
                )
            yield connection

    def _runs(self, connection: Connection, dataset: str | None) -> list[LedgerRun]:
        query = sa.select(runs).order_by(runs.c.created_at, runs.c.candidate_index)
        if dataset is not None:
            query = query.where(runs.c.dataset == dataset)
        return [_to_run(row) for row in connection.execute(query).mappings()]

    def _project(self, existing: list[LedgerRun], scope: DataScope, added: list[Charge], delta: float) -> _Projection:
        """Spent and projected composition on the most exposed individuals of ``scope``."""
        if scope.partitions_disjoint:
            keys: list[str | None] = list(scope.partitions) or sorted({p for r in existing for p in r.partitions})
            keys = keys or [None]
        else:
            keys = [None]
        requested = compose(added, delta)
        worst: _Projection | None = None
        cache: dict[frozenset[str], tuple[Composition, Composition]] = {}
        per_partition: dict[str | None, Composition] = {}
        for key in keys:
            touching = [r for r in existing if _touches(r, key)]
            signature = frozenset(r.id for r in touching)
            if signature not in cache:
                charges = [c for r in touching if (c := r.charge())]
                cache[signature] = (compose(charges, delta), compose([*charges, *added], delta))
            spent, projected = cache[signature]
            per_partition[key] = projected
            if worst is None or projected.epsilon > worst.projected.epsilon:
                worst = _Projection(spent, projected, requested, key)
        assert worst is not None
        worst.per_partition = per_partition
        return worst

    def _insert_planned(
        self,
        connection: Connection,
        scope: DataScope,
        request_id: str,
        plan: PlannedRun,
        status: str,
        dagster_run_id: str | None,
        now: datetime,
    ) -> str:
        run_id = str(uuid.uuid4())
        connection.execute(
            runs.insert().values(
                id=run_id,
                request_id=request_id,
                dataset=scope.dataset,
                partitions=json.dumps(list(scope.partitions)),
                record_set_hash=scope.record_set_hash,
                candidate_index=plan.candidate_index,
                config_fingerprint=plan.config_fingerprint,
                config=json.dumps(dict(plan.config), sort_keys=True, default=str),
                kind=plan.kind,
                status=status,
                accountant=plan.accountant,
                target_epsilon=plan.target_epsilon,
                target_delta=plan.target_delta,
                noise_multiplier=plan.noise_multiplier,
                noise_multiplier_applied=plan.noise_multiplier_applied,
                sample_rate=plan.sample_rate,
                planned_steps=plan.planned_steps,
                steps_charged=0,
                steps_completed=0,
                epsilon_planned=plan.epsilon_planned,
                epsilon_charged=0.0,
                epsilon_spent=0.0,
                dagster_run_id=dagster_run_id,
                owner=_this_owner() if status == RUNNING else None,
                heartbeat_unix=time.time(),
                created_at=now,
                updated_at=now,
                finished_at=now if status == REFUSED else None,
            )
        )
        self._event(
            connection,
            scope.dataset,
            run_id,
            "reserved" if status == RUNNING else REFUSED,
            plan.planned_steps,
            plan.epsilon_planned,
            dagster_run_id,
            None,
        )
        return run_id

    @staticmethod
    def _event(
        connection: Connection,
        dataset: str,
        run_id: str | None,
        kind: str,
        steps: int | None,
        epsilon: float | None,
        dagster_run_id: str | None,
        detail: str | None,
    ) -> None:
        connection.execute(
            events.insert().values(
                run_id=run_id,
                dataset=dataset,
                kind=kind,
                steps=steps,
                epsilon=None if epsilon is None or not math.isfinite(epsilon) else float(epsilon),
                dagster_run_id=dagster_run_id,
                detail=detail,
                at=_now(),
            )
        )


# ----------------------------------------------------------------------------------------------------- helpers


def _create_engine(url: str) -> Engine:
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() not in ("psycopg2", "psycopg"):
        raise input_error(
            "ledger", "url", f"driver {parsed.get_driver_name()!r} is not installed", "use a postgresql+psycopg2:// URL"
        )
    if parsed.get_backend_name() == "sqlite":
        if parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 60}, poolclass=sa.pool.NullPool)

        @sa.event.listens_for(engine, "connect")
        def _autocommit_driver(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
            dbapi_connection.execute("PRAGMA busy_timeout = 60000")

        @sa.event.listens_for(engine, "begin")
        def _begin_immediate(connection: Connection) -> None:
            # Take the write lock at BEGIN: SQLite's equivalent of locking the data set row.
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _greatest(column: Any, value: float | int) -> Any:
    """Portable, monotone ``max(column, value)`` evaluated by the database inside the UPDATE (no lost update)."""
    return sa.case((column.is_(None), value), (column < value, value), else_=column)


def _touches(run: LedgerRun, key: str | None) -> bool:
    return key is None or not run.partitions or key in run.partitions


def _with_status(run: LedgerRun, status: str) -> LedgerRun:
    from dataclasses import replace

    return replace(run, status=status)


def _to_run(row: Mapping[str, Any]) -> LedgerRun:
    data = dict(row)
    data["partitions"] = tuple(json.loads(data["partitions"] or "[]"))
    data["config"] = json.loads(data["config"] or "{}")
    for key in ("created_at", "updated_at", "finished_at"):
        if data[key] is not None and data[key].tzinfo is None:
            data[key] = data[key].replace(tzinfo=UTC)
    return LedgerRun(**data)


def _now() -> datetime:
    return datetime.now(UTC)


def _refusal_message(scope: DataScope, projection: _Projection, lifetime: LifetimeBudget, runs_requested: int) -> str:
    where = f"data set {scope.dataset!r}" + (f" partition {projection.partition!r}" if projection.partition else "")
    return (
        f"privacy ledger: field 'lifetime_epsilon': training refused for {where}: spent epsilon "
        f"{projection.spent.epsilon:.4g}, requested epsilon {projection.requested.epsilon:.4g} "
        f"({runs_requested} run(s)), together {projection.projected.epsilon:.4g} ({projection.projected.method} "
        f"composition) > limit {lifetime.epsilon:.4g} at delta {lifetime.delta:g}; fix: wait for new data "
        "outside this scope, lower the per-run epsilon or the number of candidates, or raise the policy's "
        "lifetime budget with the data protection officer's approval"
    )


def _process_start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat: start time in clock ticks


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _this_owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start_ticks(pid) or '?'}"


def _owner_alive(owner: str | None, heartbeat_unix: float | None, stale_after_s: float) -> bool:
    """Same host: is that very process (pid and start time) still alive? Other host: a recent heartbeat."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        state = _process_state(pid)
        if state is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        if state in ("Z", "X"):
            return False
        return started in ("?", _process_start_ticks(pid))
    return heartbeat_unix is not None and time.time() - heartbeat_unix < stale_after_s
