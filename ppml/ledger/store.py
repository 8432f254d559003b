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

:class:`PrivacyLedger` is assembled from one module per concern: the records (:mod:`ppml.ledger.records`), the
database, its migrations and lock (:mod:`ppml.ledger.database`), reservations (:mod:`ppml.ledger.reservations`),
charges (:mod:`ppml.ledger.charges`), take-over of crashed requests (:mod:`ppml.ledger.takeover`, with process
ownership in :mod:`ppml.ledger.ownership`) and queries (:mod:`ppml.ledger.queries`).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from ppml.ledger.charges import Charges
from ppml.ledger.queries import Queries
from ppml.ledger.records import SCOPE_POLICY_NAME, DataScope
from ppml.ledger.schema import datasets, events, requests, runs
from ppml.ledger.takeover import TakeOver


class PrivacyLedger(TakeOver, Charges, Queries):
    """Lifetime privacy accounting in a SQL database (SQLite file or the Dagster instance's PostgreSQL).

    ``url`` is a SQLAlchemy URL; use ``postgresql+psycopg2://...`` for PostgreSQL. Tables are created or upgraded
    by the bundled Alembic migrations on construction (``migrate=False`` to skip).
    """

    @classmethod
    def beside_dagster_instance(cls, dagster_home: Path) -> PrivacyLedger:
        """The embedded default: a SQLite file next to the Dagster instance's SQLite storage."""
        Path(dagster_home).mkdir(parents=True, exist_ok=True)
        return cls(f"sqlite:///{Path(dagster_home).resolve() / 'privacy_ledger.db'}")

    def __repr__(self) -> str:
        return f"PrivacyLedger({sa.engine.make_url(self.url).render_as_string(hide_password=True)})"

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


# ------------------------------------------------------------------------------------------------------ re-exports
# store.py used to hold the whole ledger; these names stay importable from here (callers and this session's other
# branches import ``ppml.ledger.store``). The project's own code imports the modules above.
from ppml.ledger.database import greatest as _greatest  # noqa: E402
from ppml.ledger.ownership import owner_alive as _owner_alive  # noqa: E402
from ppml.ledger.ownership import this_owner as _this_owner  # noqa: E402
from ppml.ledger.records import (  # noqa: E402
    ABANDONED,
    CHARGED_KINDS,
    COMPLETED,
    DEFAULT_STALE_AFTER_S,
    FAILED,
    REFUSED,
    RUNNING,
    SCOPE_DATASET_ID,
    BudgetExceededError,
    BudgetStatus,
    LedgerRun,
    LifetimeBudget,
    PlannedRun,
    Reservation,
)
from ppml.ledger.records import utc_now as _now  # noqa: E402

__all__ = [
    "ABANDONED",
    "CHARGED_KINDS",
    "COMPLETED",
    "DEFAULT_STALE_AFTER_S",
    "FAILED",
    "REFUSED",
    "RUNNING",
    "SCOPE_DATASET_ID",
    "SCOPE_POLICY_NAME",
    "BudgetExceededError",
    "BudgetStatus",
    "DataScope",
    "LedgerRun",
    "LifetimeBudget",
    "PlannedRun",
    "PrivacyLedger",
    "Reservation",
    "_greatest",
    "_now",
    "_owner_alive",
    "_this_owner",
]
