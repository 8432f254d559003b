"""The `ppml` command line (typer + rich): demo, ui, validate-policy, anonymize.

typer gives typed options with generated help; rich renders the progress display and summary tables. Errors a
user can cause are printed as one line on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ppml.errors import PPMLError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Privacy-preserving model training for regulated data."
)
console = Console()
errors = Console(stderr=True)


def fail(error: Exception) -> None:
    errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


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
        errors.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    table = Table(title=f"{policy_file} is valid", show_header=False)
    table.add_row("name", policy.name)
    table.add_row("regulation", policy.use_case.regulation.value)
    table.add_row("content hash", loaded.content_hash)
    table.add_row("k / suppression", f"{policy.privacy.k} / {policy.privacy.suppression_limit:.0%}")
    table.add_row("epsilon / delta", f"{policy.privacy.epsilon:g} / {policy.privacy.delta:g}")
    table.add_row("lifetime epsilon budget", f"{policy.privacy.lifetime_epsilon_budget:g}")
    table.add_row("training window", f"{policy.collection.training_window_days} days")
    console.print(table)


def _binary_labels(data: Path, policy: Any) -> Any:
    """The data's label column as 0/1 (positive = the policy's positive value); rows without a label dropped."""
    import pandas as pd

    label = policy.schema_.label
    values = pd.read_csv(data, usecols=[label.column], dtype=str)[label.column].dropna().str.strip()
    return (values == str(label.positive_value).strip()).to_numpy(dtype="int64")


def _objective_warnings(policy: Any, source: str, labels: Any, data: str) -> list[str]:
    from ppml.evaluation.utility import objective_warnings

    return objective_warnings(policy.objectives.model_dump(), source, labels=labels, data=data)


@app.command()
def demo(
    as_of: Annotated[
        str | None, typer.Option(help="Train as of this day (default: the bundled data's last day).")
    ] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy file (default: policies/adult_gdpr.yaml).")] = None,
) -> None:
    """Materialize the whole lifecycle on the bundled data, on the embedded default storage."""
    if policy is not None:
        os.environ["PPML_POLICY"] = str(policy.resolve())
    try:
        from ppml_assets.demo import run_demo

        outcome = run_demo(as_of=as_of, console=console)
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

    workspace, notes = prepare_workspace()
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    bin_dir = Path(sys.executable).parent
    processes: list[subprocess.Popen[bytes]] = []
    repo_root = Path(__file__).resolve().parent.parent
    dagster = shutil.which("dagster", path=str(bin_dir)) or "dagster"
    processes.append(
        subprocess.Popen(
            [dagster, "dev", "-w", str(repo_root / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=repo_root,
            start_new_session=True,
        )
    )
    if mlflow_port:
        mlflow = shutil.which("mlflow", path=str(bin_dir)) or "mlflow"
        processes.append(
            subprocess.Popen(
                [
                    mlflow,
                    "ui",
                    "--backend-store-uri",
                    workspace.mlflow_tracking_uri,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(mlflow_port),
                ],
                start_new_session=True,
            )
        )
    console.print(
        f"Dagster UI: http://127.0.0.1:{port}"
        + (f"   MLflow UI: http://127.0.0.1:{mlflow_port}" if mlflow_port else "")
    )
    console.print("Press Ctrl+C to stop.")
    try:
        processes[0].wait()
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes:
            # Each server runs in its own session: stop the whole process group, not just the launcher.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _register_optional_commands() -> None:
    """Commands whose engines live in their own packages."""
    from ppml.anonymization.cli import anonymize_command

    app.command("anonymize", help="Anonymize a CSV file with the same engine the anonymized_records asset uses.")(
        anonymize_command
    )


_register_optional_commands()
