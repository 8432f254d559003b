"""Stale state left by a killed process, reconciled at the next start (and on a stop signal, for our own).

A `ppml run` killed with SIGKILL cannot clean up: its ledger runs stay ``running`` (counted at their full plan),
its ledger request stays ``running`` and its MLflow runs stay RUNNING for good. The next start, holding the
workspace lock, closes what belongs to processes that are gone:

* a ledger run owned by a dead process (same host: pid and start time) is marked failed through the ledger's own
  ``fail_run``: it keeps counting everything it was pre-charged (never under-counted) and stays resumable;
* a ledger request none of whose runs is running any more, and whose Dagster run is not live, is closed as
  failed (a rerun still finds it and resumes or replaces its runs);
* an MLflow run left RUNNING by a reconciled ledger run or request, or by a Dagster run that is over, ends KILLED.

The Dagster side (runs left STARTED) lives in the orchestration layer (`ppml_assets.demo`): engines never import
Dagster.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from ppml.processes import process_alive

REASON = "its process ended without finishing (killed or stopped)"


@dataclass
class Reconciled:
    """What was closed, for the one line per kind the operator sees."""

    ledger_runs: list[str] = field(default_factory=list)
    ledger_epsilon_kept: float = 0.0
    ledger_requests: list[str] = field(default_factory=list)
    mlflow_runs: list[str] = field(default_factory=list)

    def lines(self, whose: str = "left running by a process that is gone") -> list[str]:
        lines = []
        if self.ledger_runs:
            lines.append(
                f"ledger: {len(self.ledger_runs)} run(s) {whose} marked failed; "
                f"they keep their pre-charge (epsilon {self.ledger_epsilon_kept:.4g} in all)"
            )
        if self.ledger_requests:
            lines.append(f"ledger: {len(self.ledger_requests)} training request(s) left running closed as failed")
        if self.mlflow_runs:
            lines.append(f"MLflow: {len(self.mlflow_runs)} run(s) left RUNNING ended as KILLED")
        return lines


def owner_gone(owner: str | None) -> bool:
    """A ledger owner ``host:pid:start_ticks`` on this host whose process is no longer running."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host's run: its heartbeat decides (the ledger's own stale rule)
    return not process_alive(int(pid_text), started or None)


def reconcile_ledger(
    ledger: Any,
    *,
    stale: Callable[[str | None], bool] = owner_gone,
    live_dagster_runs: Collection[str] = (),
    message: str = REASON,
) -> Reconciled:
    """Fail ledger runs whose owner is ``stale`` (they keep their pre-charge); close requests left running."""
    import sqlalchemy as sa

    from ppml.ledger.records import FAILED, RUNNING
    from ppml.ledger.schema import requests

    done = Reconciled()
    for run in ledger.runs():
        if run.status == RUNNING and stale(run.owner):
            ledger.fail_run(run.id, f"reconciled: {message}; keeps what it was pre-charged")
            done.ledger_runs.append(run.id)
            done.ledger_epsilon_kept += float(run.epsilon_charged or 0.0)
    still_running = {run.request_id for run in ledger.runs() if run.status == RUNNING}
    with ledger.engine.connect() as connection:
        open_requests = connection.execute(
            sa.select(requests.c.id, requests.c.dagster_run_id).where(requests.c.status == RUNNING)
        ).all()
    for request_id, dagster_run_id in open_requests:
        if request_id in still_running or (dagster_run_id and dagster_run_id in live_dagster_runs):
            continue
        ledger.finish_request(request_id, selected_run_id=None, status=FAILED, message=f"reconciled: {message}")
        done.ledger_requests.append(request_id)
    return done


def reconcile_mlflow(
    tracking_uri: str,
    *,
    ledger_runs: Collection[str],
    ledger_requests: Collection[str],
    dagster_runs: Collection[str],
    done: Reconciled,
) -> Reconciled:
    """End as KILLED every MLflow run left RUNNING by one of the given ledger runs/requests or Dagster runs."""
    if not (ledger_runs or ledger_requests or dagster_runs):
        return done
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from ppml.tracking import TAG_DAGSTER_RUN, TAG_LEDGER_REQUEST, TAG_LEDGER_RUN

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not experiments:
        return done
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=5000):
        tags = run.data.tags
        if (
            tags.get(TAG_LEDGER_RUN) in ledger_runs
            or tags.get(TAG_LEDGER_REQUEST) in ledger_requests
            or tags.get(TAG_DAGSTER_RUN) in dagster_runs
        ):
            client.set_terminated(run.info.run_id, status="KILLED")
            done.mlflow_runs.append(run.info.run_id)
    return done


def failed_ledger_runs_of(ledger: Any, dagster_runs: Collection[str]) -> tuple[set[str], set[str]]:
    """The ledger runs and requests that belong to the given Dagster runs (for their MLflow runs)."""
    run_ids = {r.id for r in ledger.runs() if r.dagster_run_id in dagster_runs}
    request_ids = {r.request_id for r in ledger.runs() if r.dagster_run_id in dagster_runs and r.request_id}
    return run_ids, request_ids
