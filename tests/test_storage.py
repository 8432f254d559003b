"""Storage creation under locks: processes racing on fresh stores all succeed (issue 9 item 5, issue 11 item 4).

Each racer imports everything first and then waits on a start barrier, so that all of them create the Dagster
instance storage, MLflow's tracking store and the ledger at the same moment. Unlocked, MLflow on a fresh
PostgreSQL database fails with ``UniqueViolation ... alembic_version`` and SQLite storages with ``table ...
already exists``; the test asserts the success, and that every store then holds its tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import REPO_ROOT, postgres_deployment

RACERS = 3
RACER = """
import json, os, sys, time
from pathlib import Path
import dagster, mlflow.store.tracking.sqlalchemy_store, dagster_postgres  # imported before the barriers
from ppml_assets.storage import prepare_storage
folder, index = Path(sys.argv[1]), sys.argv[2]
for round_index, env in enumerate(json.loads(sys.argv[3])):
    for name in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "PPML_LEDGER_URL"):
        os.environ.pop(name, None)
    os.environ.update(env)
    (folder / f"ready-{round_index}-{index}").touch()
    while not (folder / f"go-{round_index}").exists():
        time.sleep(0.01)
    print(round_index, prepare_storage(Path(env["PPML_HOME"])), flush=True)
"""


def _race(tmp_path: Path, rounds: list[dict[str, str]]) -> list[subprocess.CompletedProcess[str]]:
    """RACERS processes prepare each round's stores; every round is released once all racers are ready for it.

    One set of processes races on every round: importing Dagster and MLflow is what costs time here.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path), str(index), json.dumps(rounds)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(RACERS)
    ]
    deadline = time.monotonic() + 240
    for round_index in range(len(rounds)):
        while len(list(tmp_path.glob(f"ready-{round_index}-*"))) < RACERS and time.monotonic() < deadline:
            if any(racer.poll() is not None for racer in racers):
                break  # a racer failed: its output says why (asserted below)
            time.sleep(0.02)
        (tmp_path / f"go-{round_index}").touch()
    results = []
    for racer in racers:
        stdout, stderr = racer.communicate(timeout=240)
        results.append(subprocess.CompletedProcess(racer.args, racer.returncode, stdout, stderr))
    return results


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_racing_processes_prepare_fresh_sqlite_and_postgresql_storage(
    tmp_path: Path, postgres_databases: Callable[[], str]
) -> None:
    sqlite_home = tmp_path / "sqlite-home"
    dagster_url, mlflow_url = postgres_databases(), postgres_databases()
    postgres_round = {
        "PPML_HOME": str(tmp_path / "pg-home"),
        **postgres_deployment(tmp_path / "dagster_home", dagster_url, mlflow_url),
    }
    results = _race(tmp_path, [{"PPML_HOME": str(sqlite_home)}, postgres_round])
    assert all(result.returncode == 0 for result in results), [result.stderr[-1500:] for result in results]
    assert all(result.stdout.count("\n") == 2 for result in results), [result.stdout for result in results]

    assert "alembic_version" in _tables(f"sqlite:///{sqlite_home / 'mlflow' / 'mlflow.db'}")
    ledger = f"sqlite:///{sqlite_home / 'dagster' / 'privacy_ledger.db'}"
    assert {"ppml_ledger_runs", "ppml_ledger_events"} <= _tables(ledger)
    assert "runs" in _tables(f"sqlite:///{sqlite_home / 'dagster' / 'storage' / 'history' / 'runs.db'}")
    assert (sqlite_home / "mlflow" / "mlflow.db.lock").stat().st_mode & 0o077 == 0

    assert "alembic_version" in _tables(mlflow_url)
    assert {"runs", "event_logs", "jobs", "ppml_ledger_runs", "ppml_ledger_events"} <= _tables(dagster_url)
