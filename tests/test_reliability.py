"""Issue 11, hardening: one writer per workspace, stale state reconciled, raw copies at rest.

Real processes throughout: a lock holder and a ledger writer are separate Python processes killed with
SIGKILL; the Dagster instance, the ledger and the MLflow store are the real ones on SQLite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, instance_for_test

from ppml.errors import PPMLError
from ppml.ledger import PrivacyLedger
from ppml.processes import WorkspaceBusy, WorkspaceLock
from ppml.raw_copies import RawCopies
from ppml.stale_state import reconcile_ledger, reconcile_mlflow
from tests.graph_support import graph_workspace, write_policy
from tests.support import REPO_ROOT, TEST_FIRST_DAY, days

PYTHON = sys.executable


def _python(code: str, **env: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
    return subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(code)],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_line(process: subprocess.Popen[str], expected: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if expected in line:
            return line
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"no {expected!r}; stderr: {process.stderr.read() if process.stderr else ''}")


# ------------------------------------------------------------------------------------------ one writer


def test_a_second_writer_is_refused_naming_the_holder_and_a_dead_holders_lock_is_taken_over(tmp_path: Path) -> None:
    holder = _python(
        f"""
        import time
        from pathlib import Path
        from ppml.processes import WorkspaceLock
        WorkspaceLock(Path({str(tmp_path)!r}), "ppml run").acquire()
        print("held", flush=True)
        time.sleep(120)
        """
    )
    try:
        _wait_for_line(holder, "held")
        with pytest.raises(WorkspaceBusy) as refused:
            WorkspaceLock(tmp_path, "ppml demo").acquire()
        message = str(refused.value)
        assert f"in use by ppml run (pid {holder.pid}, started 20" in message and "fix: wait for it" in message
        assert "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    lock = WorkspaceLock(tmp_path, "ppml run").acquire()
    try:
        note = lock.takeover_note()
        assert note is not None and f"(pid {holder.pid}, started" in note and "ended without releasing it" in note
    finally:
        lock.release()
    again = WorkspaceLock(tmp_path, "ppml run").acquire()  # released properly: nothing to take over
    assert again.takeover_note() is None
    again.release()
    assert (tmp_path / ".ppml.lock").stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------------------------------ stale state

_KILLED_TRAINER = """
    import os, signal
    from ppml.ledger import PrivacyLedger
    from ppml.ledger.store import DataScope, LifetimeBudget, PlannedRun
    ledger = PrivacyLedger({ledger!r})
    plan = PlannedRun(0, "f" * 64, {{"lr": 0.1}}, "prv", 1.0, 1e-5, 1.0, 1.0, 0.01, 100, 1.0)
    booked = ledger.reserve(DataScope("people"), [plan], LifetimeBudget(8.0, 1e-5), request_key="k" * 64)
    run_id = booked.run_ids[0]
    ledger.pre_charge(run_id, steps=40, epsilon=0.4)
    print("pre-charged", run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_a_killed_training_is_closed_at_the_next_start_keeping_its_pre_charge(tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    mlflow_uri = os.environ["MLFLOW_TRACKING_URI"]  # the session's store (creating one costs seconds)
    from mlflow import MlflowClient

    trainer = _python(_KILLED_TRAINER.format(ledger=ledger_url))
    run_id = _wait_for_line(trainer, "pre-charged").split()[-1]
    assert trainer.wait(timeout=30) == -signal.SIGKILL
    client = MlflowClient(tracking_uri=mlflow_uri)
    experiment = client.create_experiment(f"reliability-{tmp_path.name}")
    client.create_run(experiment, tags={"ppml.ledger_run_id": run_id})  # what the killed training left RUNNING
    client.create_run(experiment, tags={"dagster.run_id": "some-other-run"})  # not ours: left alone
    ledger = PrivacyLedger(ledger_url)
    try:
        (before,) = ledger.runs()
        assert before.status == "running" and before.epsilon_charged == pytest.approx(0.4)
        done = reconcile_ledger(ledger)
        (after,) = ledger.runs()
        assert after.status == "failed" and after.epsilon_charged == pytest.approx(0.4)  # never un-charged
        assert after.charge() is not None and after.charge().steps == 40
        assert done.ledger_runs == [after.id] and len(done.ledger_requests) == 1
        assert ledger.open_request("people", "k" * 64) is not None  # a rerun still finds it to resume
        reconcile_mlflow(mlflow_uri, ledger_runs=done.ledger_runs, ledger_requests=(), dagster_runs=(), done=done)
        assert len(done.mlflow_runs) == 1
        lines = done.lines()
        assert "1 run(s) left running by a process that is gone marked failed" in lines[0]
        assert "epsilon 0.4 in all" in lines[0] and "ended as KILLED" in lines[2]
        assert reconcile_ledger(ledger).lines() == []  # once only
    finally:
        ledger.close()
    statuses = sorted(r.info.status for r in client.search_runs([experiment]))
    assert statuses == ["KILLED", "RUNNING"]


def test_a_dagster_run_left_started_by_a_dead_process_is_marked_failed(tmp_path: Path) -> None:
    from ppml.stale_state import owner_gone
    from ppml_assets.run_safety import OWNER_TAG, reconcile_dagster, this_owner

    dead = _python("import os; print(os.getpid(), flush=True)")
    dead_pid = int(dead.communicate(timeout=30)[0].strip())
    with instance_for_test() as instance:
        from dagster import job, op

        @op
        def noop() -> None:
            return None

        @job
        def tiny() -> None:
            noop()

        left = instance.create_run_for_job(tiny, tags={OWNER_TAG: f"{os.uname().nodename}:{dead_pid}:1"})
        mine = instance.create_run_for_job(tiny, tags={OWNER_TAG: this_owner()})
        foreign = instance.create_run_for_job(tiny)  # launched elsewhere (no owner): not ours to judge
        for run in (left, mine, foreign):
            instance.handle_run_event(run.run_id, _engine_event(run, DagsterEventType.RUN_START))
        reconciled, live = reconcile_dagster(instance, owner_gone, "reconciled at the next start")
        assert reconciled == {left.run_id} and live == {mine.run_id, foreign.run_id}
        assert instance.get_run_by_id(left.run_id).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(mine.run_id).status == DagsterRunStatus.STARTED


def _engine_event(run, event_type):  # type: ignore[no-untyped-def]
    from dagster._core.events import DagsterEvent

    return DagsterEvent(event_type_value=event_type.value, job_name=run.job_name)


# ------------------------------------------------------------------------------------------ raw copies


@pytest.mark.slow
def test_raw_copies_go_once_de_identification_passed_and_reruns_recollect(tmp_path: Path, landing_zone: Path) -> None:
    two = days(TEST_FIRST_DAY, 2)
    policy = write_policy(tmp_path, collection__raw_copy="encrypt")
    workspace = graph_workspace(tmp_path / "home", landing_zone, policy)
    raw_dir = workspace.home / "assets" / "raw_records"
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        result = workspace.collect(instance, two[0], two[-1])
        assert result.success
        (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "no_raw_direct_identifiers"]
        assert evaluation.metadata["raw_copy"].value == "encrypted"
        assert evaluation.metadata["raw_copy_partitions"].value == 2
        observed = instance.fetch_observations(AssetKey("raw_records"), limit=10).records
        assert sorted(r.partition_key for r in observed) == two
        assert not list(raw_dir.glob("*.parquet"))  # no plaintext raw copy
        copies = RawCopies(workspace.home / "assets", workspace.home, os.environ["PPML_HMAC_KEY"].encode())
        landing = pd.read_csv(landing_zone / f"event_date={two[0]}" / "records.csv")
        email = str(landing["email"].iloc[0])
        for path in raw_dir.glob("*.fernet"):
            assert email.encode() not in path.read_bytes() and path.stat().st_mode & 0o077 == 0
        assert set(copies.read_encrypted_raw_copy(two[0])["email"]) >= {email}
        reference = copies.read_identifier_reference(two[0])
        assert reference is not None and email in set(reference["email"]) and "age" not in reference.columns
        audit = copies.audit_records()
        assert sorted(r["partition"] for r in audit) == two and {r["action"] for r in audit} == {"encrypted"}
        assert all(email not in str(r) for r in audit)
        # a rerun re-collects from the source (the raw copy is gone) and disposes of it again
        assert workspace.collect(instance, two[0], two[0]).success
        assert [r["action"] for r in copies.audit_records()] == ["encrypted", "encrypted", "encrypted"]
        wrong = RawCopies(workspace.home / "assets", workspace.home, b"another key of at least 32 bytes!!")
        with pytest.raises(PPMLError, match=r"field 'PPML_HMAC_KEY': the file does not decrypt") as refused:
            wrong.read_identifier_reference(two[1])
        assert "\n" not in str(refused.value)
        # past retention: purged and recorded
        old = time.time() - 400 * 86400
        for path in [*raw_dir.glob("*.fernet"), *(workspace.home / "assets" / "identifier_reference").glob("*")]:
            os.utime(path, (old, old))
        purged = copies.purge_expired(retention_days=365)
        assert len(purged) == 4 and {r["action"] for r in purged} == {"purged"}
        assert not list(raw_dir.glob("*.fernet")) and copies.read_identifier_reference(two[0]) is None


def _instance_at(home: Path) -> DagsterInstance:
    return DagsterInstance.from_config(str(home / "dagster"))
