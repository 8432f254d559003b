"""Shared fixtures: the session's landing zone and real PostgreSQL databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import LANDING_TEST_DAYS, POSTGRES_ADMIN_URL, SESSION_HOME, TEST_FIRST_DAY, days


@pytest.fixture(scope="session")
def landing_zone() -> Path:
    """The bundled landing zone's test days (generated once per session)."""
    from ppml.landing_zone import ensure_bundled_landing_zone

    root = SESSION_HOME / "landing"
    ensure_bundled_landing_zone(root, only_days=days(TEST_FIRST_DAY, LANDING_TEST_DAYS))
    return root


def _postgres_available() -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the local PostgreSQL server. Skips only outside CI; under CI=true it must be there."""
    if not _postgres_available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} and CI=true: the tests must run")
        pytest.skip("PostgreSQL is not reachable (set CI=true to make this a failure)")
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_databases(postgres_server: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh, uniquely named databases (dropped afterwards); each call returns a SQLAlchemy URL."""
    import sqlalchemy as sa

    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    created: list[str] = []

    def create() -> str:
        name = f"ppml_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return sa.engine.make_url(postgres_server).set(database=name).render_as_string(hide_password=False)

    try:
        yield create
    finally:
        with admin.connect() as connection:
            for name in created:
                connection.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name}
                )
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


@pytest.fixture
def postgres_database(postgres_databases: Callable[[], str]) -> str:
    """One fresh database (see postgres_databases)."""
    return postgres_databases()


@pytest.fixture(autouse=True)
def _no_stale_dagster_state_storage() -> Iterator[None]:
    """Dagster keeps the entered instance's defs-state storage in a context variable; a test that leaves an
    instance context out of order can leave it pointing at a collected instance, and the next ``Definitions``
    load in this process then fails ("undefined DagsterInstance weakref"). Each test starts without a stale one."""
    from dagster._core.storage.defs_state.base import DefsStateStorage, _current_storage

    current = DefsStateStorage.get()
    weakref = getattr(current, "_instance_weakref", None)
    if current is not None and (weakref is None or weakref() is None):
        _current_storage.set(None)
    yield
