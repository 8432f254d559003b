"""`ppml run` and `ppml demo`: the whole lifecycle on a source's data, on the embedded default, with progress.

`ppml run` reads the user's landing zone or SQL table (as of its newest day by default); `ppml demo` is the
same on the bundled data, generated in the workspace's own landing zone.

Three runs in the persistent Dagster instance under ``.ppml/dagster`` (so `dagster dev` shows them afterwards):
the policy, one single-run backfill of collection and de-identification over the training window, and the
training job as of the window's last day. Progress is read from the instance's event log while each run
executes in a worker thread.
"""

import logging
import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ppml.console_text import labelled
from ppml.data_days import landing_zone_days, partition_bounds, sql_days
from ppml.errors import PPMLError, input_error
from ppml.landing_zone import ensure_bundled_landing_zone, landing_days, landing_file
from ppml.workspace import prepare_workspace

#: The event log keeps every event; the console shows warnings and errors only (the progress bar shows steps).
#: CRITICAL: a failed step's stack trace goes to the event log and the trace log file, never under the summary.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass
class DemoOutcome:
    succeeded: bool
    as_of: str
    report: Path | None = None
    failures: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _execute_with_progress(
    job: Any, instance: Any, progress: Progress, label: str, current: dict[str, str], **kwargs: Any
) -> Any:
    """Run a job in a thread and advance a progress bar on each finished step.

    The run carries the ``ppml/owner`` tag (this process), so that a later start can tell a run this process
    left behind when killed; ``current`` names the run for the stop-signal handler.
    """
    from dagster import DagsterEventType

    from ppml_assets.run_safety import OWNER_TAG, this_owner

    run_id = str(uuid.uuid4())
    current.update(run_id=run_id, label=label)
    kwargs["tags"] = {**kwargs.get("tags", {}), OWNER_TAG: this_owner()}
    task = progress.add_task(label, total=None)
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = job.execute_in_process(
                instance=instance, run_id=run_id, raise_on_error=False, run_config=QUIET_RUN_CONFIG, **kwargs
            )
        except Exception as error:  # reported below; the thread must not die silently
            outcome["error"] = error

    from ppml.training.progress import add_listener, remove_listener

    epoch = {"line": ""}

    def on_epoch(line: str) -> None:  # per-epoch training progress, from the training in this process
        epoch["line"] = line

    add_listener(on_epoch)
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    seen, last = 0, ""
    while worker.is_alive():
        worker.join(timeout=0.5)
        try:
            records = instance.all_logs(run_id, of_type={DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE})
        except Exception:  # the run may not be registered yet
            continue
        if len(records) != seen:
            seen = len(records)
            last = records[-1].dagster_event.step_key if records else ""
            epoch["line"] = ""
        detail = f"{last} · {epoch['line']}" if epoch["line"] else last
        progress.update(task, completed=seen, description=f"{label}: {detail}")
    remove_listener(on_epoch)
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    progress.update(task, description=f"{label}: {'done' if result.success else 'FAILED'}", completed=seen, total=seen)
    return result


def _write_step_traces(result: Any) -> Path | None:
    """The failed steps' full errors, in an owner-only log file (the console shows one line per failure)."""
    from ppml.errors import write_trace_log

    traces = [
        f"== {event.step_key}\n{event.step_failure_data.error.to_string()}"
        for event in result.all_events
        if event.is_step_failure and event.step_failure_data is not None and event.step_failure_data.error
    ]
    return write_trace_log(RuntimeError("step failures"), text="\n\n".join(traces)) if traces else None


def _failure_messages(result: Any) -> list[str]:
    """One line per failed check (saying what failed) and per other failed step (the error's last line)."""
    from ppml_assets.compliance import GATE_OP

    failed_checks = [evaluation for evaluation in result.get_asset_check_evaluations() if not evaluation.passed]
    messages = [f"check {e.check_name} on {e.asset_key.to_user_string()}: {e.description}" for e in failed_checks]
    for event in result.all_events:
        if not (event.is_step_failure and event.step_failure_data is not None):
            continue
        if any(event.step_key.endswith(name) for name in (GATE_OP, *(e.check_name for e in failed_checks))):
            continue  # a blocking check's own step failure: described above
        error = event.step_failure_data.error
        cause = error.cause if error is not None and error.cause is not None else error
        text = cause.message.strip().splitlines()[-1] if cause is not None else "step failed"
        messages.append(f"{event.step_key}: {text}")
    return messages


def _prepared_workspace(console: Console, demo_key: str = "never") -> Any:
    if os.environ.get("PPML_POLICY_DIR", "").strip():  # the code location would serve the folder, not one policy
        raise input_error(
            "environment",
            "PPML_POLICY_DIR",
            "ppml run and ppml demo run one policy, but a policy folder is set",
            "unset PPML_POLICY_DIR for this command (the folder's graphs run through their prefixed jobs)",
        )
    warnings.filterwarnings("ignore", message=r".*(currently in (beta|preview)|is deprecated).*")
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    workspace, notes = prepare_workspace(demo_key=demo_key)  # type: ignore[arg-type]
    for note in notes:
        console.print(labelled("note", note), highlight=False)
    console.print(f"Workspace: {workspace.home}")
    return workspace


def run_demo(as_of: str | None = None, console: Console | None = None) -> DemoOutcome:
    """`ppml run` on the bundled data, in the workspace's own landing zone (never a user's)."""
    from ppml_assets.run_safety import one_writer

    console = console or Console()
    workspace = _prepared_workspace(console, demo_key="create")  # only the demo may generate a key
    with one_writer(workspace.home, console, "ppml demo") as lock:
        os.environ["PPML_SOURCE"] = "landing_zone"
        os.environ["PPML_LANDING_ZONE"] = str(workspace.landing_zone)
        with console.status("Preparing the bundled landing zone (UCI Adult with synthetic identifiers)..."):
            created = ensure_bundled_landing_zone(workspace.landing_zone)
        if created is not None:
            console.print(
                f"Landing zone: {created.records} records in {created.days} daily files under {workspace.landing_zone}"
            )
        as_of = as_of or landing_days()[-1].isoformat()
        return run_lifecycle(as_of, console, workspace, title="ppml demo", lock=lock)


def run_user_data(as_of: str | None = None, console: Console | None = None) -> DemoOutcome:
    """`ppml run`: the lifecycle on the configured source (PPML_SOURCE ...), as of its newest day by default.

    Before the first step it checks the policy against the source's newest day and that every day of the
    training window has data, so that a run does not fail halfway on a gap.
    """
    from ppml_assets.run_safety import one_writer

    console = console or Console()
    workspace = _prepared_workspace(console)
    with one_writer(workspace.home, console, "ppml run") as lock:
        return _run_user_data(as_of, console, workspace, lock)


def _run_user_data(as_of: str | None, console: Console, workspace: Any, lock: Any) -> DemoOutcome:
    days = source_days()
    if not days:
        raise PPMLError(f"{source_description()}: field '(days)': no day of data found; fix: deliver daily data first")
    first, end = partition_bounds(days) or (days[0], days[-1])
    os.environ.setdefault("PPML_PARTITIONS_START", first)
    os.environ.setdefault("PPML_PARTITIONS_END", end)
    as_of = as_of or days[-1]
    if as_of not in days:
        raise PPMLError(
            f"{source_description()}: field 'as_of': no data on {as_of} (data from {days[0]} to {days[-1]}); "
            "fix: choose a day that has data, or leave --as-of out for the newest"
        )
    _check_columns(as_of)
    from ppml_assets.settings import window_partition_keys

    absent = sorted(set(window_partition_keys(as_of)) - set(days))
    if absent:
        raise PPMLError(
            f"{source_description()}: field '(days)': {len(absent)} day(s) of the training window have no data "
            f"(first {absent[0]}); fix: deliver them, or shorten collection.training_window_days in the policy"
        )
    return run_lifecycle(as_of, console, workspace, title="ppml run", lock=lock)


def _check_columns(day: str) -> None:
    """The policy names only columns the as-of day's landing file has (an SQL table is checked at collection)."""
    if os.environ.get("PPML_SOURCE", "landing_zone") == "sql":
        return
    import pandas as pd

    from ppml.policy import check_columns_exist, load_policy

    path = landing_file(Path(os.environ["PPML_LANDING_ZONE"]), day)
    try:
        columns = set(pd.read_csv(path, nrows=0).columns)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return  # collection reports an unreadable file in its own one line
    policy_path = os.environ["PPML_POLICY"]
    check_columns_exist(load_policy(policy_path).policy, columns, f"{policy_path} (against {path})")


def source_days() -> list[str]:
    """The days of data of the configured source (the same environment the code location reads)."""
    if os.environ.get("PPML_SOURCE", "landing_zone") == "sql":
        return sql_days(
            os.environ.get("PPML_SOURCE_URL", ""),
            os.environ.get("PPML_SOURCE_TABLE", "raw_records"),
            os.environ.get("PPML_SOURCE_EVENT_DATE_COLUMN", "event_date"),
        )
    return landing_zone_days(Path(os.environ["PPML_LANDING_ZONE"]))


def source_description() -> str:
    if os.environ.get("PPML_SOURCE", "landing_zone") == "sql":
        return f"{os.environ.get('PPML_SOURCE_TABLE', 'raw_records')} (SQL source)"
    return os.environ["PPML_LANDING_ZONE"]


def run_lifecycle(as_of: str, console: Console, workspace: Any, title: str, lock: Any = None) -> DemoOutcome:
    """The policy, the training window's single-run backfill and the training job, with progress and summary.

    What a killed earlier run left behind is reconciled first; a stop signal during the runs stops the children,
    closes this run's state and exits (`ppml_assets.run_safety`).
    """
    # Imported only now: the code location reads PPML_HOME, the policy and the source when it loads.
    from dagster import DagsterInstance

    from ppml.processes import StopRequested, stop_signals_raise
    from ppml_assets.run_safety import check_stores, reconcile_at_start, stop_and_exit

    tracking_uri = workspace.mlflow_tracking_uri
    check_stores(tracking_uri, lambda: _artifact_location(tracking_uri))  # before the code location loads
    from ppml_assets.settings import POLICY_PATH, default_ledger_url, window_partition_keys
    from ppml_assets.storage import prepare_storage

    window = window_partition_keys(as_of)
    ledger_url = default_ledger_url()
    prepare_storage(workspace.home)  # the stores exist before the multiprocess executor's parallel steps
    instance = DagsterInstance.get()
    reconcile_at_start(instance, ledger_url, tracking_uri, console)
    console.print(
        f"Policy: {POLICY_PATH}\n"
        f"Training as of {as_of} over {len(window)} daily partitions ({window[0]} .. {window[-1]})"
    )
    started = time.perf_counter()
    current: dict[str, str] = {}
    stderr_fd = os.dup(2)  # the terminal's stderr: a running step's log capture redirects descriptor 2
    try:
        with stop_signals_raise():
            try:
                outcome = _run_the_three(as_of, window, console, instance, current)
            except StopRequested as stop:
                stop_and_exit(stop.signum, current, instance, (ledger_url, tracking_uri), lock, stderr_fd)
                raise  # not reached: stop_and_exit ends the process
    finally:
        os.close(stderr_fd)
    outcome.summary["seconds"] = round(time.perf_counter() - started, 1)
    _print_summary(console, instance, outcome, workspace.reports / as_of, title)
    return outcome


def _artifact_location(tracking_uri: str) -> str:
    """Where MLflow will write artifacts: the existing experiment's location, else the configured one."""
    from ppml_assets.definitions import defs

    configured = (defs.resources or {}).get("mlflow")
    if configured is None:  # resources built per policy: the environment says the same
        return os.environ.get("PPML_MLFLOW_ARTIFACTS") or str(Path(os.environ["PPML_HOME"]) / "mlflow" / "artifacts")
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return str(configured.artifact_location or "")
    try:
        experiment = configured.client().get_experiment_by_name(configured.experiment_name)
    except Exception:  # an unreachable store is reported by check_stores
        experiment = None
    return experiment.artifact_location if experiment is not None else str(configured.artifact_location or "")


def lifecycle_progress(console: Console) -> Progress:
    """The runs' progress display: the description is cut with an ellipsis so the step count and the elapsed
    time always stay on one 80-column line."""
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
        BarColumn(bar_width=10),
        TextColumn("{task.completed:>2} steps", table_column=Column(no_wrap=True)),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        console=console,
        expand=True,
    )


def _run_the_three(as_of: str, window: list[str], console: Console, instance: Any, current: dict[str, str]) -> Any:
    """The three runs in order; the first that fails ends the sequence."""
    from ppml_assets.definitions import defs

    with lifecycle_progress(console) as progress:
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
            result = _execute_with_progress(job, instance, progress, label, current, **kwargs)
            if not result.success:
                failures = _failure_messages(result)
                log = _write_step_traces(result)
                if log is not None:
                    failures.append(f"full step traces: {log}")
                return DemoOutcome(False, as_of, failures=failures)
    return DemoOutcome(True, as_of)


def _print_summary(console: Console, instance: Any, outcome: DemoOutcome, report_dir: Path, title: str) -> None:
    from ppml_assets.common import latest_metadata  # after prepare_workspace: settings read the environment

    table = Table(title=f"{title} as of {outcome.as_of}")
    table.add_column("stage")
    table.add_column("result")
    rows = [
        (
            "anonymized_records",
            lambda m: (
                f"{m.get('dagster/row_count')} records, smallest class {m.get('min_class_size')}, "
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
                f"{m.get('remaining_epsilon')} of {m.get('lifetime_epsilon_budget')} lifetime epsilon left"
                + (" (make clean resets the demo workspace)" if title == "ppml demo" else "")
            ),
        ),
    ]
    for asset, describe in rows:
        metadata = latest_metadata(instance, asset, outcome.as_of)
        table.add_row(asset, describe(metadata) if metadata else "[dim]not materialized[/]")
    console.print(table)
    for failure in outcome.failures:
        console.print(labelled("failed", failure, "bold red"), highlight=False)
    report = report_dir / "report.html"
    if report.exists():
        outcome.report = report
        console.print(f"Compliance report: [bold]{report}[/] (evidence: {report_dir / 'evidence.json'})")
        if (report_dir / "evidence_pack.json").exists():
            console.print(f"Evidence pack: [bold]{report_dir}[/] (signed; check it with: ppml verify {report_dir})")
    console.print(f"Finished in {outcome.summary['seconds']} s. Explore the lineage with: .venv/bin/ppml ui")
