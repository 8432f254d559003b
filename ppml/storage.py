"""Storage creation and migrations, once and under a lock, before any parallel step touches a store.

Dagster's instance storage, MLflow's tracking database and the privacy-budget ledger each create their tables
(and run Alembic migrations) on first use. Two processes doing that at once on a fresh store crash: SQLite
reports ``table ... already exists``, MLflow on PostgreSQL ``UniqueViolation ... alembic_version``. So every
store is prepared under its own lock — a session ``pg_advisory_lock`` in the database itself for PostgreSQL
(it serialises processes on every host), a file lock beside the file for SQLite — and every later opener finds
the tables ready. Preparation is idempotent and remembered per process, so calling it in front of every first
use (the CLI, each step process, each celery worker) costs one lock round trip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ppml.errors import PPMLError
from ppml.private_files import PRIVATE_FILE_MODE, private_dir

#: pg_advisory_lock key shared by every ppml process ("ppmlstor"); PostgreSQL scopes it to the database.
STORAGE_LOCK_KEY = 0x7070_6D6C_7374_6F72 & 0x7FFF_FFFF_FFFF_FFFF
LOCK_TIMEOUT_S = float(os.environ.get("PPML_STORAGE_LOCK_TIMEOUT_S", "600"))

_prepared: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Store:
    """One store to prepare: what it is (for messages), where it lives, and how to create its tables."""

    name: str
    url: str
    create: Callable[[], None]
    lock_file: Path | None = None  # for a store that is not an SQL URL (Dagster's SQLite folder)


def _safe(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


@contextmanager
def store_lock(url: str, lock_file: Path | None = None, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the store's creation lock: an advisory lock in a PostgreSQL database, else a file lock.

    ``lock_file`` wins when given; an SQLite URL locks ``<database>.lock`` beside its file; a URL that is neither
    (an MLflow server, a file store) needs no lock and yields at once.
    """
    if lock_file is None and _is_sql(url):
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "postgresql":
            with _advisory_lock(url, timeout_s):
                yield
            return
        if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
            lock_file = Path(parsed.database).with_name(Path(parsed.database).name + ".lock")
    if lock_file is None:
        yield
        return
    with _file_lock(lock_file, timeout_s):
        yield


@contextmanager
def _file_lock(lock_file: Path, timeout_s: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    private_dir(lock_file.parent)
    lock = FileLock(lock_file, timeout=timeout_s, mode=PRIVATE_FILE_MODE)
    try:
        lock.acquire()
    except Timeout:
        raise PPMLError(
            f"{lock_file}: field '(storage lock)': another process has held it for {timeout_s:.0f} s; "
            "fix: wait for it to finish, or stop the process that holds it"
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _advisory_lock(url: str, timeout_s: float) -> Iterator[None]:
    """A session-level advisory lock on a dedicated connection (released on unlock or when it closes)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SET lock_timeout = :ms"), {"ms": f"{int(timeout_s * 1000)}"})
            try:
                connection.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": STORAGE_LOCK_KEY})
            except sa.exc.OperationalError as exc:
                raise PPMLError(
                    f"{_safe(url)}: field '(storage lock)': not acquired ({type(exc.orig).__name__}); "
                    "fix: check that the database is reachable and no process holds the lock for long"
                ) from None
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": STORAGE_LOCK_KEY})
                connection.commit()
    finally:
        engine.dispose()


def _is_sql(url: str) -> bool:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        return False
    return parsed.get_backend_name() in ("sqlite", "postgresql", "mysql", "mssql")


def prepare_store(store: Store) -> bool:
    """Create the store's tables under its lock, once per process; True when this call did the work."""
    key = (store.name, store.url)
    if key in _prepared:
        return False
    with store_lock(store.url, store.lock_file):
        store.create()
    _prepared.add(key)
    return True


def prepare_storage(stores: list[Store]) -> list[str]:
    """Prepare each store in turn (one lock at a time, so two preparers can never deadlock); return their names."""
    return [store.name for store in stores if prepare_store(store)]


def mlflow_store(tracking_uri: str) -> Store:
    """MLflow's tracking database: opening a client on it runs MLflow's own Alembic migrations."""

    def create() -> None:
        if not _is_sql(tracking_uri):
            return  # an MLflow server or a file store migrates itself
        from mlflow import MlflowClient

        database = sa.engine.make_url(tracking_uri).database
        if sa.engine.make_url(tracking_uri).get_backend_name() == "sqlite" and database:
            private_dir(Path(database).parent)
        MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)

    return Store("MLflow tracking store", tracking_uri, create)


def ledger_store(url: str) -> Store:
    """The privacy-budget ledger: its bundled Alembic migrations."""

    def create() -> None:
        from ppml.ledger import PrivacyLedger

        PrivacyLedger(url).close()

    return Store("privacy-budget ledger", url, create)


def prepare_mlflow(tracking_uri: str) -> None:
    """What every MLflow client in ppml calls first: the store exists before the first parallel step uses it."""
    prepare_store(mlflow_store(tracking_uri))


def describe(url: str) -> str:
    """A store URL without its password, for the operator's output."""
    return _safe(url)
