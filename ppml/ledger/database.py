"""The ledger's database: engine (SQLite file or PostgreSQL), the bundled Alembic migrations, the per-data-set
lock every budget decision holds, and the row helpers every part of the ledger shares.

SQLite takes its write lock at ``BEGIN IMMEDIATE``; PostgreSQL locks the data set's row ``FOR UPDATE``: either way
two trainings deciding at once are serialised and the second sees the first's reservation.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from ppml.errors import input_error
from ppml.ledger.records import SCOPE_DATASET_ID, SCOPE_POLICY_NAME, DataScope, LedgerRun, to_run, utc_now
from ppml.ledger.schema import VERSION_TABLE, datasets, events, runs

MIGRATION_LOCK_ID = 0x7070_6D6C_6C65_6467 & 0x7FFF_FFFF_FFFF_FFFF  # pg_advisory_xact_lock key ("ppmlledg")


class LedgerCore:
    """Connection, schema and lock: what the ledger's reservations, charges, take-over and queries build on."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = create_engine(url)
        self._postgres = self.engine.dialect.name == "postgresql"
        if migrate:
            self.migrate()

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        """Upgrade the ledger tables to the newest bundled revision; concurrent callers are serialised."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(resources.files("ppml.ledger") / "migrations"))
        config.set_main_option("version_table", VERSION_TABLE)
        with self.engine.begin() as connection:
            if self._postgres:
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

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
                    created_at=utc_now(),
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
        return [to_run(row) for row in connection.execute(query).mappings()]

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
                at=utc_now(),
            )
        )


def create_engine(url: str) -> Engine:
    """SQLite with ``BEGIN IMMEDIATE`` transactions and no pool; PostgreSQL through psycopg2 (or psycopg)."""
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


def greatest(column: Any, value: float | int) -> Any:
    """Portable, monotone ``max(column, value)`` evaluated by the database inside the UPDATE (no lost update)."""
    return sa.case((column.is_(None), value), (column < value, value), else_=column)
