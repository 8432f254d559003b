"""The `ppml` command line (typer + rich): init, run, demo, ui, validate-policy, anonymize, erasure-status.

typer gives typed options with generated help; rich renders the progress display and summary tables. Errors a
user can cause are printed as one line on stderr with exit code 2, never as a traceback; anything unexpected is
one line with exit code 1 and its full trace in an owner-only log file whose path that line names
(:class:`OneLineErrors` wraps every command, including those registered later).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ppml.console_text import labelled
from ppml.errors import PPMLError, describe_unexpected, error_lines, write_trace_log
from ppml.processes import StopRequested, start_group, stop_groups, stop_signals_raise

console = Console()
errors = Console(stderr=True)


def print_error(message: str) -> None:
    """``error: <message>`` on stderr; the message is printed literally (no rich markup), so a pattern such as
    ``^[a-z0-9][a-z0-9_-]{2,63}$`` reaches the operator whole."""
    errors.print(labelled("error", message, "bold red"), highlight=False, soft_wrap=True)


def fail(error: Exception) -> None:
    for line in error_lines(error):  # every problem of a validation, one line each
        print_error(line)
    raise typer.Exit(code=2)


def usage_error_line(error: Exception) -> str:
    """A bad option value, a missing option or an unknown one, as the canonical line: field, problem, fix."""
    param = getattr(error, "param", None)
    field = param.opts[0] if param is not None and getattr(param, "opts", None) else "(arguments)"
    problem = str(getattr(error, "message", error)).removeprefix("Value error, ").rstrip(".")
    ctx = getattr(error, "ctx", None)
    command = ctx.command_path if ctx is not None else "ppml"
    return f"command line: field '{field}': {problem}; fix: see `{command} --help` for what it accepts"


class OneLineErrors(TyperGroup):
    """Every command's errors end as one line on stderr: PPMLError exit 2, anything else exit 1 plus a trace log."""

    def invoke(self, ctx: click.Context) -> object:
        from ppml.library_logs import route_library_logs

        route_library_logs()  # library log lines to $PPML_HOME/logs/ppml.log, never the console
        try:
            return super().invoke(ctx)
        except (typer.TyperException, click.ClickException) as error:
            if getattr(error, "exit_code", None) == 2 and hasattr(error, "ctx"):  # a usage error: one line, exit 2
                print_error(usage_error_line(error))
                raise typer.Exit(code=2) from None
            raise
        except (typer.Exit, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except PPMLError as error:
            fail(error)
        except Exception as error:  # the point: no traceback ever reaches the operator
            log = write_trace_log(error)
            print_error(describe_unexpected(error, log))
            # a file the operator named that cannot be read or written is their error (2), anything else ours (1)
            user_error = isinstance(error, OSError) and error.filename is not None
            raise typer.Exit(code=2 if user_error else 1) from None
        return None


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Privacy-preserving model training for regulated data.",
)


def _print_version(value: bool) -> None:
    if value:
        from ppml import __version__

        console.print(f"ppml {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Privacy-preserving model training for regulated data."""


def parse_day(value: str | None, option: str) -> str | None:
    """A YYYY-MM-DD option value, checked before any work starts."""
    from datetime import date

    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise PPMLError(
            f"command line: field '{option}': '{value}' is not a date; fix: write it as YYYY-MM-DD, e.g. 2026-04-30"
        ) from None


@app.command("validate-policy")
def validate_policy(
    policy_file: Annotated[Path, typer.Argument(help="The policy YAML file.")],
    data: Annotated[
        Path | None, typer.Option(help="A landing CSV file whose columns the policy's schema must name.")
    ] = None,
) -> None:
    """Validate a policy file and print its content hash (the policy's version)."""
    import pandas as pd

    from ppml.policy import check_columns_exist, load_policy

    try:
        loaded = load_policy(policy_file)
        labels = None
        if data is not None:
            columns = set(pd.read_csv(data, nrows=0).columns)
            check_columns_exist(loaded.policy, columns, f"{policy_file} (against {data})")
            labels = _binary_labels(data, loaded.policy)
    except PPMLError as error:
        fail(error)
    policy = loaded.policy
    for warning in _objective_warnings(policy, str(policy_file), labels, str(data)):
        errors.print(labelled("warning", warning, "bold yellow"), highlight=False, soft_wrap=True)
    table = Table(title=f"{policy_file} is valid", show_header=False)
    table.add_row("name", policy.name)
    table.add_row("regulation", policy.use_case.regulation.value)
    table.add_row("content hash", loaded.content_hash)
    table.add_row("k / suppression", f"{policy.privacy.k} / {policy.privacy.suppression_limit:.0%}")
    table.add_row("epsilon / delta", f"{policy.privacy.epsilon:g} / {policy.privacy.delta}")
    table.add_row("lifetime epsilon budget", f"{policy.privacy.lifetime_epsilon_budget:g}")
    table.add_row("training window", f"{policy.collection.training_window_days} days")
    console.print(table)


def _binary_labels(data: Path, policy: Any) -> Any:
    """The data's label column encoded as training encodes it (0/1, or the class index of a multi-class label);
    rows without a label, or with a value of no class, dropped."""
    import pandas as pd

    label = policy.schema_.label
    values = pd.read_csv(data, usecols=[label.column], dtype=str)[label.column].dropna().str.strip()
    if not policy.schema_.is_multiclass:
        return (values == str(label.positive_value).strip()).to_numpy(dtype="int64")
    encoded = policy.schema_.encode_label(values.str.rstrip(".")).to_numpy(dtype="int64")
    return encoded[encoded >= 0]


def _objective_warnings(policy: Any, source: str, labels: Any, data: str) -> list[str]:
    from ppml.evaluation.objectives import objective_warnings

    return objective_warnings(policy.objectives.model_dump(), source, labels=labels, data=data)


@app.command("init")
def init_policy(
    data: Annotated[Path, typer.Option(help="A CSV of your records (a sample or a whole export).")],
    out: Annotated[Path, typer.Option(help="Where to write the draft policy.")] = Path("policy.yaml"),
    name: Annotated[str | None, typer.Option(help="The policy's name (default: from the file name).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing draft.")] = False,
) -> None:
    """Draft a commented policy from a CSV for review; every guess is marked '# CONFIRM:'."""
    from ppml.policy_draft import draft_policy

    try:
        result = draft_policy(data, out, name=name, force=force)
    except PPMLError as error:
        fail(error)
    console.print(f"Draft policy: [bold]{result.policy_path}[/]")
    for path in result.hierarchy_paths:
        console.print(f"Hierarchy: {path}")
    for note in result.notes:
        console.print(labelled("note", note), highlight=False)


@app.command()
def demo(
    as_of: Annotated[
        str | None, typer.Option(help="Train as of this day (default: the bundled data's last day).")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy file (default: policies/adult_gdpr.yaml).")] = None,
) -> None:
    """Materialize the whole lifecycle on the bundled data, on the embedded default storage."""
    as_of = parse_day(as_of, "--as-of")
    if policy is not None:
        os.environ["PPML_POLICY"] = str(policy.resolve())
    try:
        from ppml_assets.demo import run_demo

        outcome = run_demo(as_of=as_of, console=console)
    except PPMLError as error:
        fail(error)
    if not outcome.succeeded:
        raise typer.Exit(code=1)


@app.command("run")
def run_lifecycle_command(
    policy: Annotated[Path, typer.Option(help="Your policy file (draft one with `ppml init --data FILE`).")],
    landing_zone: Annotated[
        Path | None, typer.Option(help="Folder of daily files: event_date=YYYY-MM-DD/records.csv.")
    ] = None,
    source_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL of an SQL source (instead).")] = None,
    source_table: Annotated[str, typer.Option(help="The SQL source's table.")] = "raw_records",
    as_of: Annotated[str | None, typer.Option(help="Train as of this day (default: the newest day of data).")] = None,
) -> None:
    """The whole lifecycle on your data, on the embedded default storage: policy, collection, training, report."""
    from ppml.federated.settings import refuse_federated_policy
    from ppml.policy import load_policy

    try:
        as_of = parse_day(as_of, "--as-of")
        if (landing_zone is None) == (source_url is None):
            raise PPMLError(
                "ppml run: field '--landing-zone/--source-url': give exactly one data source; "
                "fix: pass --landing-zone DIR or --source-url URL"
            )
        as_of = parse_day(as_of, "--as-of")
        loaded = load_policy(policy)
        refuse_federated_policy(loaded.path, loaded.policy.training.mode, "ppml run (the central lifecycle)")
        os.environ["PPML_POLICY"] = str(loaded.path)
        if landing_zone is not None:
            if not landing_zone.is_dir():
                raise PPMLError(
                    f"{landing_zone}: field '--landing-zone': folder not found; fix: pass the landing zone folder"
                )
            os.environ.update(PPML_SOURCE="landing_zone", PPML_LANDING_ZONE=str(landing_zone.resolve()))
        else:
            os.environ.update(PPML_SOURCE="sql", PPML_SOURCE_URL=str(source_url), PPML_SOURCE_TABLE=source_table)
            os.environ["PPML_SOURCE_EVENT_DATE_COLUMN"] = loaded.policy.schema_.event_date
        from ppml_assets.demo import run_user_data

        outcome = run_user_data(as_of=as_of, console=console)
    except PPMLError as error:
        fail(error)
    if not outcome.succeeded:
        raise typer.Exit(code=1)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Dagster UI port.")] = 3000,
    mlflow_port: Annotated[int, typer.Option(help="MLflow UI port (0 to skip).")] = 5000,
) -> None:
    """Start the Dagster UI (and the MLflow UI) on 127.0.0.1 over the embedded default workspace."""
    from ppml.workspace import prepare_workspace

    workspace, notes = prepare_workspace(demo_key="reuse")
    for note in notes:
        console.print(labelled("note", note), highlight=False)
    from ppml_assets.storage import prepare_storage

    prepare_storage(workspace.home)  # the webserver and the daemon start together: storage exists before either
    bin_dir = Path(sys.executable).parent
    repo_root = Path(__file__).resolve().parent.parent
    dagster = shutil.which("dagster", path=str(bin_dir)) or "dagster"
    commands = [[dagster, "dev", "-w", str(repo_root / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]]
    if mlflow_port:
        mlflow = shutil.which("mlflow", path=str(bin_dir)) or "mlflow"
        uri = workspace.mlflow_tracking_uri
        commands.append([mlflow, "ui", "--backend-store-uri", uri, "-h", "127.0.0.1", "-p", str(mlflow_port)])
    processes: list = []
    with stop_signals_raise():
        try:
            for command in commands:
                processes.append(start_group(command, cwd=repo_root))
            console.print(
                f"Dagster UI: http://127.0.0.1:{port}"
                + (f"   MLflow UI: http://127.0.0.1:{mlflow_port}" if mlflow_port else "")
            )
            console.print("Press Ctrl+C to stop.")
            processes[0].wait()
        except (KeyboardInterrupt, StopRequested):
            pass
        finally:
            # SIGINT, SIGTERM and SIGHUP all end here: every server's whole process group is stopped.
            stop_groups(processes)


@app.command("erasure-status")
def erasure_status_command(
    subject_id: Annotated[str, typer.Argument(help="The data subject's id, as the source and erasure list hold it.")],
    policy: Annotated[Path, typer.Option(help="The policy the subject's records were collected under.")],
) -> None:
    """Where a subject's erasure reached: the request, the partitions, runs and model versions that included them."""
    from mlflow import MlflowClient

    from ppml.deidentification import hmac_key_from_env
    from ppml.erasure import erasure_status, index_root
    from ppml.policy import load_policy
    from ppml.workspace import prepare_workspace

    loaded = load_policy(policy)
    workspace, _ = prepare_workspace(demo_key="reuse")  # the key of the workspace's pseudonyms (demo or exported)
    root = index_root(workspace.home / "assets", loaded.policy)
    client = MlflowClient(tracking_uri=workspace.mlflow_tracking_uri)
    status = erasure_status(subject_id, loaded, hmac_key_from_env(), root, client)
    if not status.known:
        console.print("unknown subject")  # an answer, not an error: nothing here holds or held the id
        return
    request = status.requested
    lines = [
        "request: "
        + (", ".join(f"{k} {v}" for k, v in request.items()) if request else "not on the erasure list")
        + f"; policy action for affected versions: {status.action}",
        "de-identified partitions still holding records: " + (", ".join(status.partitions) or "none"),
        f"runs and model versions that included the subject: {len(status.runs) or 'none'}",
    ]
    for run in status.runs:
        erasure = run["erasure"] or ("pending: the next training run applies it" if request else "not requested")
        aliases = f" [{', '.join(run['aliases'])}]" if run["aliases"] else ""
        lines.append(
            f"  {run['model_name']} v{run['version']} as of {run['as_of']}: {run['records']} record(s) in "
            f"{len(run['partitions'])} partition(s) {', '.join(run['partitions'])}; Dagster run "
            f"{run['dagster_run_id']}, MLflow run {run['mlflow_run_id']}; registry: {run['registry']}{aliases}; "
            f"erasure: {erasure}; per-person bound epsilon {run['person_epsilon_bound']:.4g}, "
            f"delta {run['person_delta_bound']:.3g}"
        )
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def _register_optional_commands() -> None:
    """Commands whose engines live in their own packages."""
    from ppml.cli_anonymize import anonymize_command  # the engine is imported when the command runs

    app.command("anonymize", help="Anonymize a CSV file with the same engine the anonymized_records asset uses.")(
        anonymize_command
    )
    from ppml.deploy_cli import deploy_app

    app.add_typer(deploy_app, name="deploy")
    from ppml.serving.cli import rollback_command, serve_command

    app.command("serve")(serve_command)
    app.command("rollback")(rollback_command)
    from ppml.cli_inspect import register_inspect_commands

    register_inspect_commands(app)
    from ppml.evidence.cli import verify_command

    app.command("verify")(verify_command)


_register_optional_commands()
