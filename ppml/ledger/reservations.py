"""Reserving a request: every planned run's full spend in one locked transaction, or a recorded refusal.

The projection composes what the data set has spent with what is asked, on the most exposed individuals (one
partition when partitions are disjoint, else the whole data set): a request is refused before any step runs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ppml.errors import input_error
from ppml.ledger.composition import Charge, Composition, compose
from ppml.ledger.database import LedgerCore
from ppml.ledger.ownership import this_owner
from ppml.ledger.records import (
    FAILED,
    REFUSED,
    RUNNING,
    BudgetExceededError,
    DataScope,
    LedgerRun,
    LifetimeBudget,
    PlannedRun,
    Projection,
    Reservation,
    refusal_message,
    touches,
    utc_now,
)
from ppml.ledger.schema import requests, runs


class Reservations(LedgerCore):
    """Budget decisions that add runs: :meth:`reserve` and the projection every decision is made on."""

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
        now = utc_now()
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
                message = refusal_message(scope, projection, lifetime, len(planned))
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

    def _project(self, existing: list[LedgerRun], scope: DataScope, added: list[Charge], delta: float) -> Projection:
        """Spent and projected composition on the most exposed individuals of ``scope``."""
        if scope.partitions_disjoint:
            keys: list[str | None] = list(scope.partitions) or sorted({p for r in existing for p in r.partitions})
            keys = keys or [None]
        else:
            keys = [None]
        requested = compose(added, delta)
        worst: Projection | None = None
        cache: dict[frozenset[str], tuple[Composition, Composition]] = {}
        per_partition: dict[str | None, Composition] = {}
        for key in keys:
            touching = [r for r in existing if touches(r, key)]
            signature = frozenset(r.id for r in touching)
            if signature not in cache:
                charges = [c for r in touching if (c := r.charge())]
                cache[signature] = (compose(charges, delta), compose([*charges, *added], delta))
            spent, projected = cache[signature]
            per_partition[key] = projected
            if worst is None or projected.epsilon > worst.projected.epsilon:
                worst = Projection(spent, projected, requested, key)
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
                owner=this_owner() if status == RUNNING else None,
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
