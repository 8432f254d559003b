"""`ppml status`, `ppml ledger` and `ppml report`: look at a workspace without running anything.

Why separate commands: after `ppml demo` or a scheduled run an operator asks three things -- what ran and what
passed, how much privacy budget is left, and the report for a given day -- and should not need the Dagster UI,
MLflow or SQL for any of them. Everything here reads the workspace (Dagster instance, ledger, reports); only
`ppml report` writes, and only the report files of the day it is asked for. Output fits 80 columns.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ppml.errors import PPMLError, input_error

if TYPE_CHECKING:  # the workspace module imports pandas: only when a command runs
    from ppml.workspace import Workspace

console = Console(width=min(Console().width, 80), highlight=False)


def _workspace() -> Workspace:
    """The workspace of PPML_HOME (default ``.ppml``), refused in one line when nothing ran there yet."""
    from ppml.private_files import use_private_umask
    from ppml.workspace import Workspace, default_home

    use_private_umask()  # a re-rendered report, like every file of the workspace, is owner-only
    workspace = Workspace(default_home())
    if not workspace.dagster_home.is_dir() and "DAGSTER_HOME" not in os.environ:
        raise input_error(
            str(workspace.home),
            "PPML_HOME",
            "no ppml workspace here (nothing has run)",
            "run `ppml demo` or `ppml run` first, or export PPML_HOME as the workspace folder",
        )
    return workspace


def _policy(path: Path | None) -> Any:
    from ppml.policy import bundled_policy_path, load_policy

    return load_policy(path or os.environ.get("PPML_POLICY") or bundled_policy_path("adult_gdpr"), check_files=False)


def _evidence_days(workspace: Workspace, scope: str = "") -> list[Path]:
    folder = workspace.reports / scope if scope else workspace.reports
    return sorted(p for p in folder.glob("*/evidence.json") if p.is_file()) if folder.is_dir() else []


def _latest_evidence(workspace: Workspace) -> dict[str, Any] | None:
    files = _evidence_days(workspace)
    return json.loads(files[-1].read_text()) if files else None


def _recent_runs(workspace: Workspace, limit: int) -> list[tuple[str, str, str, str]]:
    """(job, partition or range, status, start time) of the newest Dagster runs."""
    from datetime import UTC, datetime

    from dagster import DagsterInstance, RunsFilter

    workspace.use_dagster_home()
    with DagsterInstance.get() as instance:
        records = instance.get_run_records(RunsFilter(), limit=limit)
    rows = []
    for record in records:
        run = record.dagster_run
        tags = run.tags
        partition = tags.get("dagster/partition") or (
            f"{tags['dagster/asset_partition_range_start']}..{tags['dagster/asset_partition_range_end']}"
            if "dagster/asset_partition_range_start" in tags
            else "-"
        )
        started = record.start_time or record.create_timestamp.timestamp()
        when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M")
        rows.append((run.job_name, partition, run.status.value.lower(), when))
    return rows


def _budget_rows(workspace: Workspace, loaded: Any, evidence: dict[str, Any] | None) -> list[tuple[str, ...]]:
    """Spent and remaining lifetime epsilon per ledger scope of the policy's data set."""
    from ppml.ledger import LifetimeBudget, PrivacyLedger

    privacy = loaded.policy.privacy
    delta = privacy.delta
    if delta == "auto":  # the budget is stated at the delta the last training resolved (else a safe small one)
        delta = float(((evidence or {}).get("training") or {}).get("target_delta") or 1e-6)
    store = PrivacyLedger(workspace.ledger_url)
    try:
        statuses = store.budget_status(loaded.policy.dataset.id, LifetimeBudget(privacy.lifetime_epsilon_budget, delta))
    finally:
        store.close()
    return [
        (
            s.dataset + (f" [{s.partition}]" if s.partition else ""),
            f"{s.spent.epsilon:.4g}",
            f"{s.remaining_epsilon:.4g} of {s.limit_epsilon:g}",
            str(s.runs),
        )
        for s in statuses
    ]


def status_command(
    policy: Annotated[Path | None, typer.Option(help="The policy whose budget to show (default: PPML_POLICY).")] = None,
    runs: Annotated[int, typer.Option(help="How many recent Dagster runs to list.", min=1)] = 8,
) -> None:
    """What ran, what passed, and the privacy budget left per scope."""
    workspace = _workspace()
    loaded = _policy(policy)
    table = Table(title=f"recent runs in {workspace.home}", title_justify="left")
    for column in ("job", "partition", "status", "started (UTC)"):
        table.add_column(column, overflow="fold")
    for row in _recent_runs(workspace, runs):
        table.add_row(*row)
    console.print(table)
    evidence = _latest_evidence(workspace)
    if evidence is None:
        console.print("compliance: no report yet")
    else:
        checks = evidence.get("checks") or []
        failing = [c["name"] for c in checks if not c["passed"]]
        decision = evidence.get("decision") or {}
        console.print(
            f"compliance as of {evidence['as_of']}: {len(checks) - len(failing)} of {len(checks)} requirements "
            f"passed" + (f"; failing: {', '.join(failing)}" if failing else ""),
            soft_wrap=False,
            markup=False,
        )
        console.print(
            f"model {decision.get('model_name')} v{decision.get('version')}: {decision.get('status')}", markup=False
        )
    budget = Table(title=f"privacy budget of {loaded.policy.dataset.id}", title_justify="left")
    for column in ("scope", "spent ε", "left ε", "runs"):
        budget.add_column(column, overflow="fold")
    for row in _budget_rows(workspace, loaded, evidence):
        budget.add_row(*row)
    console.print(budget)


def _scope_ledger(workspace: Workspace, dataset: str) -> Table:
    from ppml.ledger import PrivacyLedger

    store = PrivacyLedger(workspace.ledger_url)
    try:
        entries = store.runs(dataset)
    finally:
        store.close()
    table = Table(title=f"ledger of {dataset}: {len(entries)} runs", title_justify="left")
    for column in ("run", "kind", "status", "ε charged", "days"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        charged = entry.epsilon_charged if entry.epsilon_charged is not None else entry.epsilon_planned
        table.add_row(
            entry.id[:8],
            entry.kind,
            entry.status,
            "-" if charged is None else f"{charged:.4g}",
            str(len(entry.partitions) or "all"),
        )
    return table


def _person_ledger(subject: str, loaded: Any) -> list[str]:
    """One person's account: every run that included them and the per-person bound, summed (an over-count)."""
    from mlflow import MlflowClient

    from ppml.deidentification import hmac_key_from_env
    from ppml.erasure import erasure_status, index_root
    from ppml.workspace import prepare_workspace

    workspace, _ = prepare_workspace(demo_key="reuse")
    root = index_root(workspace.home / "assets", loaded.policy)
    found = erasure_status(subject, loaded, hmac_key_from_env(), root, MlflowClient(workspace.mlflow_tracking_uri))
    if not found.known:
        return ["unknown subject"]
    lines = [
        f"{run['model_name']} v{run['version']} as of {run['as_of']}: epsilon {run['person_epsilon_bound']:.4g}, "
        f"delta {run['person_delta_bound']:.3g}"
        for run in found.runs
    ]
    total = sum(run["person_epsilon_bound"] for run in found.runs)
    budget = loaded.policy.privacy.lifetime_epsilon_budget
    return [*lines, f"total (basic composition, an upper bound): epsilon {total:.4g} of {budget:g}"]


def ledger_command(
    policy: Annotated[
        Path | None, typer.Option(help="The policy whose data set to show (default: PPML_POLICY).")
    ] = None,
    subject: Annotated[
        str | None, typer.Option(help="One data subject's id: their runs and per-person epsilon instead.")
    ] = None,
) -> None:
    """The privacy-budget account: every charged run of the policy's data set, or one person's."""
    loaded = _policy(policy)
    if subject is not None:
        for line in _person_ledger(subject, loaded):
            console.print(line, markup=False)
        return
    console.print(_scope_ledger(_workspace(), loaded.policy.dataset.id))


def report_command(
    as_of: Annotated[str, typer.Option(help="The as-of day whose report to render again (YYYY-MM-DD).")],
    scope: Annotated[str, typer.Option(help="A policy graph's prefix (PPML_POLICY_DIR); default: none.")] = "",
) -> None:
    """Render the day's report again from its evidence.json (e.g. after an upgrade of the template), into a
    ``rerendered/`` folder beside it: the signed originals stay byte for byte as ``ppml verify`` checks them."""
    from ppml.cli import parse_day
    from ppml.reporting import write_report

    day = parse_day(as_of, "--as-of")
    workspace = _workspace()
    folder = (workspace.reports / scope if scope else workspace.reports) / str(day)
    evidence_file = folder / "evidence.json"
    if not evidence_file.is_file():
        known = ", ".join(p.parent.name for p in _evidence_days(workspace, scope)) or "none"
        raise PPMLError(
            f"{evidence_file}: field '--as-of': no evidence for {day} (days with a report: {known}); "
            "fix: pass one of those days"
        )
    files = write_report(json.loads(evidence_file.read_text()), folder / "rerendered")
    console.print(f"Compliance report: {files.html}", markup=False)  # folded at 80 columns, like the demo
    console.print("(the signed report and evidence pack beside it are unchanged)", markup=False)


def register_inspect_commands(app: typer.Typer) -> None:
    app.command("status")(status_command)
    app.command("ledger")(ledger_command)
    app.command("report")(report_command)
