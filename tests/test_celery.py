"""Celery scale-out end to end: two real workers on RabbitMQ execute ``celery_collection_job``'s steps.

The run is the launch sequence's first part — the policy and a range of days' collection and de-identification
— submitted with ``dagster job execute`` to a persistent (SQLite) instance; every step is a Celery task that a
worker started exactly as docs/training.md says (``celery -A ppml_assets.celery_app worker ...``, each in its own
session, stopped by process group) takes from the broker. Skipped only when RabbitMQ is down and CI is not set.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.support import GDPR_POLICY, REPO_ROOT, TEST_FIRST_DAY, days, mlflow_sqlite_uri

BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672
WORKERS = 2


def _rabbitmq_up() -> bool:
    try:
        with socket.create_connection((BROKER_HOST, BROKER_PORT), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def broker() -> str:
    if not _rabbitmq_up():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"RabbitMQ is not reachable at {BROKER_HOST}:{BROKER_PORT} and CI=true: the test must run")
        pytest.skip("RabbitMQ is not reachable (set CI=true to make this a failure)")
    return f"amqp://guest:guest@{BROKER_HOST}:{BROKER_PORT}//"


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_ready(logs: list[Path], workers: list[subprocess.Popen[bytes]], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(log.exists() and " ready." in log.read_text(errors="replace") for log in logs):
            return
        for worker, log in zip(workers, logs, strict=True):
            assert worker.poll() is None, f"celery worker exited: {log.read_text(errors='replace')[-2000:]}"
        time.sleep(0.5)
    raise AssertionError("celery workers did not become ready: " + logs[0].read_text(errors="replace")[-2000:])


@pytest.mark.slow
def test_celery_collection_job_runs_on_two_workers(tmp_path: Path, landing_zone: Path, broker: str) -> None:
    from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

    from ppml.workspace import EMBEDDED_DAGSTER_YAML

    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(EMBEDDED_DAGSTER_YAML.format(base_dir=dagster_home / "storage"))
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PPML_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "PPML_POLICY": str(GDPR_POLICY),
        "PPML_LANDING_ZONE": str(landing_zone),
        "MLFLOW_TRACKING_URI": mlflow_sqlite_uri(home),
        "PPML_LEDGER_URL": f"sqlite:///{home / 'ledger.db'}",
        "PPML_CELERY_BROKER": broker,
        "PPML_CELERY_BACKEND": "rpc://",
    }
    bin_dir = Path(sys.executable).parent
    names = [f"ppml-test-{index}-{uuid.uuid4().hex[:6]}" for index in range(WORKERS)]
    logs = [tmp_path / f"{name}.log" for name in names]
    workers = []
    try:
        for name, log in zip(names, logs, strict=True):
            command = [str(bin_dir / "celery"), "-A", "ppml_assets.celery_app", "worker", "-Q", "dagster", "-c", "1"]
            command += ["-n", f"{name}@%h", "--without-gossip", "--without-mingle", "-l", "INFO", "-f", str(log)]
            workers.append(
                subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        _wait_ready(logs, workers)
        window = days(TEST_FIRST_DAY, 3)
        tags = {"dagster/asset_partition_range_start": window[0], "dagster/asset_partition_range_end": window[-1]}
        execute = [str(bin_dir / "dagster"), "job", "execute", "-m", "ppml_assets.definitions", "-d", str(REPO_ROOT)]
        launch = subprocess.run(
            [*execute, "-j", "celery_collection_job", "--tags", json.dumps(tags)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
        )
    finally:
        for worker in workers:
            _stop_group(worker)
    assert launch.returncode == 0, launch.stderr[-3000:]

    with DagsterInstance.from_config(str(dagster_home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].status == DagsterRunStatus.SUCCESS, [r.status for r in runs]
        records = instance.get_records_for_run(runs[0].run_id, of_type=DagsterEventType.ENGINE_EVENT).records
        executed: dict[str, list[str]] = {}
        for record in records:
            event = record.event_log_entry.dagster_event
            metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
            if "Celery worker" in metadata:
                executed.setdefault(metadata["Celery worker"].value, []).append(event.step_key)
        materialized = instance.fetch_materializations(AssetKey("deidentified_records"), limit=20).records
    assert {worker.split("@")[0] for worker in executed} == set(names), executed
    steps = sorted(step for keys in executed.values() for step in keys)
    assert steps == sorted(
        [
            "privacy_requirements",
            "raw_records",
            "raw_records_raw_records_expectations",
            "deidentified_records",
            "deidentified_records_no_raw_direct_identifiers",
        ]
    ), executed
    partitions = {record.partition_key for record in materialized}
    assert partitions == set(window)
    assert all((home / "assets" / "deidentified_records" / f"{day}.parquet").is_file() for day in window)
