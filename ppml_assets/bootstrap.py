"""`ppml deploy bootstrap`: the production launch sequence, submitted to the configured Dagster instance.

The sequence the README's production section describes — storage prepared (once, under locks), the policy
(``requirements_job``), the training window's collection backfill as one run (``collection_job`` with the
partition-range tags Dagster's single-run backfills carry), and the first training (``training_job`` for the
as-of day) — each submitted with ``dagster job launch`` to the run queue of ``$DAGSTER_HOME`` and awaited before
the next starts, because each reads what the previous one materialized. The daemon (``dagster-daemon run``)
executes them; afterwards the schedules keep the deployment going.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ppml.errors import PPMLError, input_error

STEPS = ("policy", "collection", "training")
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")
DAEMON_HEARTBEAT_S = 120


@dataclass(frozen=True)
class SubmittedRun:
    label: str
    job: str
    run_id: str
    status: str


def _launch(workspace_file: Path, job: str, tags: dict[str, str]) -> str:
    """Submit one run of ``job`` through the workspace's code location; return its run id."""
    run_id = str(uuid.uuid4())
    dagster = Path(sys.executable).parent / "dagster"
    command = [str(dagster), "job", "launch", "-w", str(workspace_file), "-j", job, "--run-id", run_id]
    if tags:
        command += ["--tags", json.dumps(tags)]
    launched = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=workspace_file.parent)
    if launched.returncode != 0:
        lines = [line for line in launched.stderr.strip().splitlines() if line.strip()] or ["no output"]
        raise PPMLError(
            f"{workspace_file}: field '{job}': the run could not be submitted ({lines[-1].strip()[:300]}); "
            "fix: check the code location loads (dagster definitions validate -w workspace.yaml)"
        )
    return run_id


def _await(run_id: str, job: str, wait_s: float) -> str:
    from dagster import DagsterInstance

    deadline = time.monotonic() + wait_s
    with DagsterInstance.get() as instance:
        while True:
            run = instance.get_run_by_id(run_id)
            status = run.status.value if run is not None else "NOT_FOUND"
            if status in TERMINAL:
                return status
            if time.monotonic() > deadline:
                raise PPMLError(
                    f"{os.environ['DAGSTER_HOME']}: field '{job}': run {run_id} still {status} after {wait_s:.0f} s; "
                    "fix: check that dagster-daemon run is running for this instance, then bootstrap again"
                )
            time.sleep(2)


def require_queued_instance() -> str | None:
    """Bootstrap submits to a run queue that a daemon serves; returns a note when no daemon is serving it yet."""
    from dagster import DagsterInstance
    from dagster._core.run_coordinator import QueuedRunCoordinator

    with DagsterInstance.get() as instance:
        if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
            raise input_error(
                f"{os.environ['DAGSTER_HOME']}/dagster.yaml",
                "run_coordinator",
                "this instance does not queue runs for a daemon",
                "configure the QueuedRunCoordinator as deploy/dagster.yaml does (or use `ppml run` instead)",
            )
        heartbeat = instance.get_daemon_heartbeats().get("QUEUED_RUN_COORDINATOR")
    if heartbeat is None or time.time() - heartbeat.timestamp > DAEMON_HEARTBEAT_S:
        return (
            f"no dagster-daemon has served this instance's run queue in the last {DAEMON_HEARTBEAT_S} s: the runs "
            "wait until `dagster-daemon run -w workspace.yaml` runs with the same environment"
        )
    return None


def launch_plan(through: str, as_of: str | None) -> list[tuple[str, str, dict[str, str]]]:
    """The runs to submit, in order: (label, job, tags)."""
    if through not in STEPS:
        raise input_error("command line", "--through", f"unknown step '{through}'", f"use one of {', '.join(STEPS)}")
    plan = [("policy", "requirements_job", {})]
    if through == "policy":
        return plan
    from ppml_assets.demo import source_days
    from ppml_assets.settings import window_partition_keys

    days = source_days()
    as_of = as_of or (days[-1] if days else None)
    if as_of is None:
        raise input_error("source", "(days)", "no day of data found", "deliver daily data first, or pass --as-of")
    window = window_partition_keys(as_of)
    plan.append(
        (
            "collection",
            "collection_job",
            {"dagster/asset_partition_range_start": window[0], "dagster/asset_partition_range_end": window[-1]},
        )
    )
    if through == "training":
        plan.append(("training", "training_job", {"dagster/partition": as_of}))
    return plan


def bootstrap(
    workspace_file: Path,
    through: str = "training",
    as_of: str | None = None,
    wait_s: float = 3600,
    report: Callable[[str], None] = print,
) -> list[SubmittedRun]:
    """Prepare storage, then submit and await each run of the launch sequence; stop at the first that fails."""
    from ppml_assets.storage import prepare_storage

    plan = launch_plan(through, as_of)  # the step, the source's days and the window checked before any work
    prepared = prepare_storage()
    report(f"storage ready: {', '.join(prepared) or 'already prepared'}")
    note = require_queued_instance()
    if note:
        report(f"note: {note}")
    submitted: list[SubmittedRun] = []
    for label, job, tags in plan:
        run_id = _launch(workspace_file, job, tags)
        report(f"{label}: {job} run {run_id} queued")
        status = _await(run_id, job, wait_s)
        submitted.append(SubmittedRun(label, job, run_id, status))
        report(f"{label}: {job} run {run_id} {status}")
        if status != "SUCCESS":
            raise PPMLError(
                f"{os.environ['DAGSTER_HOME']}: field '{job}': run {run_id} ended {status}; "
                "fix: open the run in the Dagster UI, correct the cause, then bootstrap again"
            )
    return submitted
