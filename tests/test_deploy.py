"""The production configuration as shipped: deploy/dagster.yaml against a real PostgreSQL server, runs queued.

The instance is loaded from the very file an operator copies into $DAGSTER_HOME, with the variables of
deploy/ppml.env.example, and a job of the project's code location (workspace.yaml) is submitted to the
QueuedRunCoordinator — by `ppml deploy bootstrap`, after it prepared the storage — and executed by a real
`dagster-daemon run`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import REPO_ROOT, postgres_variables

DEPLOY = REPO_ROOT / "deploy"
DAEMON_WAIT_S = 420


def _example_variables() -> list[str]:
    """The variable names deploy/ppml.env.example exports (the test must set every one of them)."""
    text = (DEPLOY / "ppml.env.example").read_text()
    return re.findall(r"^export ([A-Z_][A-Z0-9_]*)=", text, flags=re.MULTILINE)


def _deploy_environment(tmp_path: Path, dagster_url: str, mlflow_url: str, source_url: str) -> dict[str, str]:
    values = {
        **postgres_variables(dagster_url),
        "PPML_LEDGER_URL": dagster_url,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "PPML_MLFLOW_ARTIFACTS": (tmp_path / "artifacts").as_uri(),
        "PPML_ASSET_BASE": (tmp_path / "shared" / "assets").as_uri(),
        "PPML_CHECKPOINT_BASE": str(tmp_path / "shared" / "checkpoints"),
        "PPML_CELERY_BROKER": "amqp://guest:guest@127.0.0.1:5672//",
        "PPML_CELERY_BACKEND": "rpc://",
        "PPML_HMAC_KEY": "k" * 40,
        "PPML_SIGNING_KEY": os.environ["PPML_SIGNING_KEY"],
        "PPML_SOURCE": "sql",
        "PPML_SOURCE_URL": source_url,
        "PPML_SOURCE_TABLE": "patient_events",
        "PPML_PARTITIONS_START": "2026-01-01",
        "PPML_PARTITIONS_END": "open",
        "PPML_POLICY": str(REPO_ROOT / "policies" / "adult_gdpr.yaml"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    assert set(_example_variables()) <= set(values), "deploy/ppml.env.example names a variable this test ignores"
    return values


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stop the daemon and everything it started (it runs in its own session), with a bounded wait."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.mark.postgres
@pytest.mark.slow
def test_deploy_dagster_yaml_runs_a_queued_run_on_postgresql(
    tmp_path: Path, postgres_databases: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dagster import DagsterInstance, DagsterRunStatus
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster_postgres import PostgresRunStorage

    dagster_url, mlflow_url, source_url = postgres_databases(), postgres_databases(), postgres_databases()
    environment = _deploy_environment(tmp_path, dagster_url, mlflow_url, source_url)
    home = Path(environment["DAGSTER_HOME"])
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PPML_HOME", str(tmp_path / "ppml-home"))

    with DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 4

    # The documented launch command: storage prepared under its locks, then the policy run submitted to the
    # queue and awaited; it stays QUEUED until the daemon starts.
    bin_dir = Path(sys.executable).parent
    env = {**os.environ}
    common = ["-w", str(REPO_ROOT / "workspace.yaml")]
    command = [str(bin_dir / "ppml"), "deploy", "bootstrap", "--policy", environment["PPML_POLICY"]]
    bootstrap = subprocess.Popen(
        [*command, "--through", "policy", "--wait", str(DAEMON_WAIT_S)],
        cwd=REPO_ROOT,
        env={**env, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    daemon = None
    try:
        run_id = _queued_run(bootstrap)
        daemon = subprocess.Popen(
            [str(bin_dir / "dagster-daemon"), "run", *common],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        output, errors = bootstrap.communicate(timeout=DAEMON_WAIT_S + 60)
        assert bootstrap.returncode == 0, (output + errors)[-2000:]
        assert f"policy: requirements_job run {run_id} SUCCESS" in " ".join(output.split()), output
        with DagsterInstance.get() as instance:
            assert instance.get_run_by_id(run_id).status == DagsterRunStatus.SUCCESS
            materialized = instance.get_latest_materialization_event(_asset_key("privacy_requirements"))
            assert materialized is not None and materialized.run_id == run_id
        # The asset file lies on the shared base (a file:// URL), owner-only.
        stored = tmp_path / "shared" / "assets" / "privacy_requirements" / "latest.json"
        assert stored.is_file() and stored.stat().st_mode & 0o077 == 0
    finally:
        for process in (bootstrap, daemon):
            if process is not None:
                _stop_group(process)
    engine = sa.create_engine(dagster_url)
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar_one()
    engine.dispose()
    assert stored == "SUCCESS"


def _queued_run(bootstrap: subprocess.Popen[str]) -> str:
    """The run bootstrap submitted, once it is QUEUED (no daemon yet, so it stays there)."""
    from dagster import DagsterInstance, DagsterRunStatus

    deadline = time.monotonic() + 300
    with DagsterInstance.get() as instance:
        while time.monotonic() < deadline:
            runs = instance.get_runs()
            if runs:
                assert len(runs) == 1 and runs[0].status == DagsterRunStatus.QUEUED, [r.status for r in runs]
                return runs[0].run_id
            assert bootstrap.poll() is None, bootstrap.communicate()
            time.sleep(1)
    raise AssertionError("ppml deploy bootstrap submitted no run within 300 s")


def _asset_key(name: str):  # type: ignore[no-untyped-def]
    from dagster import AssetKey

    return AssetKey(name)
