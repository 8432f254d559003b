"""`ppml demo`: the whole lifecycle on the bundled data, on the embedded default storage, with progress.

Three runs in the persistent Dagster instance under ``.ppml/dagster`` (so `dagster dev` shows them afterwards):
the policy, one single-run backfill of collection and de-identification over the training window, and the
training job as of the window's last day. Progress is read from the instance's event log while each run
executes in a worker thread.
"""

import logging
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ppml.landing_zone import ensure_bundled_landing_zone, landing_days
from ppml.workspace import prepare_workspace

#: The event log keeps every event; the console shows warnings and errors only (the progress bar shows steps).
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class DemoOutcome:
    succeeded: bool
    as_of: str
    report: Path | None = None
    failures: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _execute_with_progress(job: Any, instance: Any, progress: Progress, label: str, **kwargs: Any) -> Any:
    """Run a job in a thread and advance a progress bar on each finished step."""
    from dagster import DagsterEventType

    run_id = str(uuid.uuid4())
    task = progress.add_task(label, total=None)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = job.execute_in_process(
                instance=instance, run_id=run_id, raise_on_error=False, run_config=QUIET_RUN_CONFIG, **kwargs
            )
        except Exception as error:  # reported below; the thread must not die silently
            outcome["error"] = error

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    seen = 0
    while worker.is_alive():
        worker.join(timeout=0.5)
        try:
            records = instance.all_logs(run_id, of_type={DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE})
        except Exception:  # the run may not be registered yet
            continue
        if len(records) != seen:
            seen = len(records)
            last = records[-1].dagster_event.step_key if records else ""
            progress.update(task, completed=seen, description=f"{label}: {last}")
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    progress.update(task, description=f"{label}: {'done' if result.success else 'FAILED'}", completed=seen, total=seen)
    return result


def _failure_messages(result: Any) -> list[str]:
    """One line per failed check (saying what failed) and per other failed step (the error's last line)."""
    failed_checks = [evaluation for evaluation in result.get_asset_check_evaluations() if not evaluation.passed]
    messages = [f"check {e.check_name} on {e.asset_key.to_user_string()}: {e.description}" for e in failed_checks]
    for event in result.all_events:
        if not (event.is_step_failure and event.step_failure_data is not None):
            continue
        if any(event.step_key.endswith(e.check_name) for e in failed_checks):
            continue  # a blocking check's own step failure: described above
        error = event.step_failure_data.error
        cause = error.cause if error is not None and error.cause is not None else error
        text = cause.message.strip().splitlines()[-1] if cause is not None else "step failed"
        messages.append(f"{event.step_key}: {text}")
    return messages


def run_demo(as_of: str | None = None, console: Console | None = None) -> DemoOutcome:
    console = console or Console()
    warnings.filterwarnings("ignore", message=r".*(currently in (beta|preview)|is deprecated).*")
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    workspace, notes = prepare_workspace()
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"Workspace: {workspace.home}")
    with console.status("Preparing the bundled landing zone (UCI Adult with synthetic identifiers)..."):
        created = ensure_bundled_landing_zone(workspace.landing_zone)
    if created is not None:
        console.print(
            f"Landing zone: {created.records} records in {created.days} daily files under {workspace.landing_zone}"
        )

    # Imported only now: the code location reads PPML_HOME and the policy when it loads.
    from dagster import DagsterInstance

    from ppml_assets.definitions import defs
    from ppml_assets.settings import POLICY_PATH, window_partition_keys

    as_of = as_of or landing_days()[-1].isoformat()
    window = window_partition_keys(as_of)
    instance = DagsterInstance.get()
    console.print(
        f"Policy: {POLICY_PATH}\n"
        f"Training as of {as_of} over {len(window)} daily partitions ({window[0]} .. {window[-1]})"
    )
    started = time.perf_counter()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} steps"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        runs = [
            ("1/3 policy", defs.resolve_job_def("requirements_job"), {}),
            (
                "2/3 collection + de-identification (single-run backfill)",
                defs.resolve_job_def("collection_job"),
                {
                    "tags": {
                        "dagster/asset_partition_range_start": window[0],
                        "dagster/asset_partition_range_end": window[-1],
                    }
                },
            ),
            ("3/3 anonymization .. compliance report", defs.resolve_job_def("training_job"), {"partition_key": as_of}),
        ]
        for label, job, kwargs in runs:
            result = _execute_with_progress(job, instance, progress, label, **kwargs)
            if not result.success:
                failures = _failure_messages(result)
                outcome = DemoOutcome(False, as_of, failures=failures)
                break
        else:
            outcome = DemoOutcome(True, as_of)
    outcome.summary["seconds"] = round(time.perf_counter() - started, 1)
    _print_summary(console, instance, outcome, workspace.reports / as_of)
    return outcome


def _print_summary(console: Console, instance: Any, outcome: DemoOutcome, report_dir: Path) -> None:
    from ppml_assets.common import latest_metadata  # after prepare_workspace: settings read the environment

    table = Table(title=f"ppml demo as of {outcome.as_of}")
    table.add_column("stage")
    table.add_column("result")
    rows = [
        (
            "anonymized_records",
            lambda m: (
                f"{m.get('row_count')} records, smallest class {m.get('min_class_size')}, "
                f"{m.get('suppressed_records')} suppressed"
            ),
        ),
        ("training_features", lambda m: f"{m.get('feature_count')} features, rows {m.get('rows')}"),
        (
            "dp_model",
            lambda m: f"epsilon {m.get('epsilon')} (target {m.get('target_epsilon')}), delta {m.get('delta')}",
        ),
        ("model_evaluation", lambda m: f"accuracy {m.get('accuracy')}, ROC AUC {m.get('roc_auc')}"),
        ("privacy_evaluation", lambda m: f"strongest MIA AUC {m.get('strongest_attack_auc')}"),
        ("compliance_status", lambda m: f"{m.get('passed_checks')} of {m.get('total_checks')} requirements passed"),
        ("registered_model", lambda m: f"{m.get('model_name')} v{m.get('version')} -> {m.get('decision')}"),
        (
            "privacy_budget",
            lambda m: (
                f"{m.get('remaining_epsilon')} of {m.get('lifetime_epsilon_budget')} lifetime "
                "epsilon left (make clean resets the demo workspace)"
            ),
        ),
    ]
    for asset, describe in rows:
        metadata = latest_metadata(instance, asset, outcome.as_of)
        table.add_row(asset, describe(metadata) if metadata else "[dim]not materialized[/]")
    console.print(table)
    for failure in outcome.failures:
        console.print(f"[bold red]failed:[/] {failure}")
    report = report_dir / "report.html"
    if report.exists():
        outcome.report = report
        console.print(f"Compliance report: [bold]{report}[/] (evidence: {report_dir / 'evidence.json'})")
    console.print(f"Finished in {outcome.summary['seconds']} s. Explore the lineage with: .venv/bin/ppml ui")
