"""Taking over an interrupted request: runs with a checkpoint resume in their own rows, runs without one are
abandoned (keeping everything they were charged) in favour of fresh planned runs.

Refused -- and recorded -- when a run is still owned by a live process (:mod:`ppml.ledger.ownership`) or when the
budget would be exceeded; the whole decision is one locked transaction, like a reservation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy.engine import Connection

from ppml.errors import PPMLError
from ppml.ledger.ownership import owner_alive, this_owner
from ppml.ledger.records import (
    ABANDONED,
    COMPLETED,
    DEFAULT_STALE_AFTER_S,
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
    utc_now,
    with_status,
)
from ppml.ledger.reservations import Reservations
from ppml.ledger.schema import requests, runs


class TakeOver(Reservations):
    """:meth:`take_over`: continue a crashed or failed request without counting any of its runs twice or less."""

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
        now = utc_now()
        new_ids: list[str] = []
        with self._locked(scope) as connection:
            existing = self._runs(connection, scope.dataset)
            by_id = {r.id: r for r in existing}
            touched = [*resume, *replace]
            _check_takeover(by_id, request_id, touched, stale_after_s)
            projection = self._takeover_projection(existing, scope, resume, replace, lifetime)
            if projection.projected.epsilon > lifetime.epsilon * (1 + 1e-12):
                # recorded in this transaction (committed), raised after it
                refusal = self._record_refusal(connection, scope, projection, lifetime, len(touched), dagster_run_id)
            else:
                refusal = None
                self._resume_runs(connection, scope, by_id, resume, dagster_run_id, now)
                new_ids = self._replace_runs(connection, scope, request_id, by_id, replace, dagster_run_id, now)
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

    def _takeover_projection(
        self,
        existing: list[LedgerRun],
        scope: DataScope,
        resume: Sequence[str],
        replace: Mapping[str, PlannedRun],
        lifetime: LifetimeBudget,
    ) -> Projection:
        """What the request will count once taken over: resumed runs at their full plan again, abandoned runs at
        what they were charged, replacements at their plan (``spent`` is the figure before the take-over)."""
        after = [
            with_status(r, RUNNING) if r.id in resume else (with_status(r, ABANDONED) if r.id in replace else r)
            for r in existing
        ]
        added = [p.charge() for p in replace.values()]
        projection = self._project(after, scope, added, lifetime.delta)
        before = self._project(existing, scope, [], lifetime.delta)
        projection.spent = before.spent
        return projection

    def _record_refusal(
        self,
        connection: Connection,
        scope: DataScope,
        projection: Projection,
        lifetime: LifetimeBudget,
        runs_requested: int,
        dagster_run_id: str | None,
    ) -> BudgetExceededError:
        """The refusal event, written in the decision's transaction; the error is raised once it has committed."""
        message = refusal_message(scope, projection, lifetime, runs_requested)
        self._event(
            connection, scope.dataset, None, REFUSED, None, projection.requested.epsilon, dagster_run_id, message
        )
        return BudgetExceededError(
            message,
            spent=projection.spent,
            requested=projection.requested,
            projected=projection.projected,
            limit=lifetime,
            dataset=scope.dataset,
            partition=projection.partition,
        )

    def _resume_runs(
        self,
        connection: Connection,
        scope: DataScope,
        by_id: Mapping[str, LedgerRun],
        resume: Sequence[str],
        dagster_run_id: str | None,
        now: datetime,
    ) -> None:
        """The resumed runs are this process's now (running again, so counted at their full plan)."""
        owner = this_owner()
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

    def _replace_runs(
        self,
        connection: Connection,
        scope: DataScope,
        request_id: str,
        by_id: Mapping[str, LedgerRun],
        replace: Mapping[str, PlannedRun],
        dagster_run_id: str | None,
        now: datetime,
    ) -> list[str]:
        """Abandon each run without a checkpoint (its charge stays) and reserve its fresh replacement."""
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
            new_ids.append(self._insert_planned(connection, scope, request_id, plan, RUNNING, dagster_run_id, now))
        return new_ids


def _check_takeover(
    by_id: Mapping[str, LedgerRun], request_id: str, touched: Sequence[str], stale_after_s: float
) -> None:
    """Each run taken over belongs to the request, is not being trained by a live process, and can still run."""
    for run_id in touched:
        run = by_id.get(run_id)
        if run is None or run.request_id != request_id:
            raise PPMLError(
                f"ledger: field 'run_id': {run_id} is not a run of request {request_id}; "
                "fix: resume the request the run belongs to"
            )
        if run.status == RUNNING and owner_alive(run.owner, run.heartbeat_unix, stale_after_s):
            raise PPMLError(
                f"ledger: field 'owner': run {run_id} is still being trained by {run.owner}; fix: wait for "
                "that training to finish or stop it before re-materializing"
            )
        if run.status in (COMPLETED, REFUSED):
            raise PPMLError(
                f"ledger: field 'status': run {run_id} is {run.status} and cannot be resumed; "
                "fix: start a new training request"
            )
