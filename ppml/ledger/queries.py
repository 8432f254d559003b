"""Reading the ledger: runs, events, the composed spend of a scope and the remaining budget per scope."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ppml.errors import PPMLError
from ppml.ledger.composition import Composition, compose
from ppml.ledger.records import (
    CHARGED_KINDS,
    REFUSED,
    RUNNING,
    BudgetStatus,
    DataScope,
    LedgerRun,
    LifetimeBudget,
    to_run,
    touches,
)
from ppml.ledger.reservations import Reservations
from ppml.ledger.schema import datasets, events, runs


class Queries(Reservations):
    """Read-only views (the spend uses the reservations' projection, so the figures are the decisions' figures)."""

    def runs(self, dataset: str | None = None) -> list[LedgerRun]:
        with self.engine.connect() as connection:
            return self._runs(connection, dataset)

    def run(self, run_id: str) -> LedgerRun:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(runs).where(runs.c.id == run_id)).mappings().first()
        if row is None:
            raise PPMLError(f"ledger: field 'run_id': no run {run_id}; fix: check the id")
        return to_run(row)

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
            touching = [r for r in existing if touches(r, key)]
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
