"""`prepare_storage()`: Dagster's instance storage, MLflow's tracking store and the ledger, created under locks.

The engine (:mod:`ppml.storage`) knows the locks and the MLflow and ledger stores; this thin layer adds the
Dagster instance, whose database is named in ``$DAGSTER_HOME/dagster.yaml``: PostgreSQL storage is locked in
that database (the variables the file names are read as Dagster would), SQLite storage with a file lock in
DAGSTER_HOME. Nothing here reads the policy, so preparing storage needs no code location.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from ppml.storage import Store, ledger_store, mlflow_store
from ppml.storage import prepare_storage as prepare_stores
from ppml.workspace import Workspace, default_home


def _resolve(value: Any) -> Any:
    """Dagster's ``{env: NAME}`` indirection, as the instance itself resolves it."""
    if isinstance(value, dict) and set(value) == {"env"}:
        return os.environ.get(value["env"], "")
    return value


def dagster_postgres_url(dagster_home: Path) -> str | None:
    """The PostgreSQL URL of the instance's storage, or None for SQLite (the embedded default)."""
    config_file = dagster_home / "dagster.yaml"
    if not config_file.is_file():
        return None
    config = yaml.safe_load(config_file.read_text()) or {}
    postgres = (config.get("storage") or {}).get("postgres")
    if not postgres:
        return None
    from dagster_postgres.utils import pg_url_from_config

    resolved: dict[str, Any] = {}
    if "postgres_url" in postgres:
        resolved["postgres_url"] = _resolve(postgres["postgres_url"])
    else:
        resolved["postgres_db"] = {key: _resolve(value) for key, value in postgres["postgres_db"].items()}
    return pg_url_from_config(resolved)


def dagster_store(dagster_home: Path) -> Store:
    """The Dagster instance: constructing it creates (or upgrades) its run, event-log and schedule storage."""

    def create() -> None:
        from dagster import DagsterInstance

        with DagsterInstance.get() as instance:
            instance.get_runs(limit=1)
            instance.get_asset_keys()
            instance.all_instigator_state()

    url = dagster_postgres_url(dagster_home)
    if url is not None:
        return Store("Dagster instance storage", url, create)
    return Store("Dagster instance storage", str(dagster_home), create, lock_file=dagster_home / ".storage.lock")


def prepare_storage(home: Path | None = None) -> list[str]:
    """Create every store the deployment configures, once, each under its lock; return what this call created.

    Called before any run starts (``ppml run``/``demo``, ``ppml deploy prepare-storage`` and ``bootstrap``);
    step processes and celery workers go through the same locks on their first MLflow or ledger use.
    """
    workspace = Workspace((home or default_home()).resolve())
    dagster_home = workspace.use_dagster_home()
    return prepare_stores(
        [dagster_store(dagster_home), mlflow_store(workspace.mlflow_tracking_uri), ledger_store(workspace.ledger_url)]
    )
