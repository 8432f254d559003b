"""`ppml deploy ...`: the production launch sequence as commands (storage first, then the runs).

The commands act on the deployment the environment configures (DAGSTER_HOME with deploy/dagster.yaml,
MLFLOW_TRACKING_URI, PPML_LEDGER_URL; the embedded workspace under PPML_HOME when they are unset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
REPO_ROOT = Path(__file__).resolve().parent.parent

deploy_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Production: prepare storage, bootstrap a policy."
)


@deploy_app.command("prepare-storage")
def prepare_storage_command() -> None:
    """Create (or upgrade) the Dagster instance storage, MLflow's store and the ledger, each once under a lock."""
    from ppml.private_files import use_private_umask
    from ppml_assets.storage import prepare_storage

    use_private_umask()
    prepared = prepare_storage()
    console.print(f"Storage ready: {', '.join(prepared) if prepared else 'nothing to prepare'}")


@deploy_app.command("bootstrap")
def bootstrap_command(
    policy: Annotated[Path, typer.Option(help="The policy the deployment serves (its PPML_POLICY).")],
    through: Annotated[str, typer.Option(help="Last step to run: policy, collection or training.")] = "training",
    as_of: Annotated[str | None, typer.Option(help="As-of day YYYY-MM-DD (default: the source's newest day).")] = None,
    workspace: Annotated[Path, typer.Option(help="The Dagster workspace file.")] = REPO_ROOT / "workspace.yaml",
    wait: Annotated[float, typer.Option(help="Seconds to wait for each run.")] = 3600,
) -> None:
    """Prepare storage, then submit the policy, the window's collection backfill and the first training to
    the configured Dagster instance's run queue (served by dagster-daemon), each awaited before the next."""
    import os

    from ppml.cli import parse_day
    from ppml.errors import input_error
    from ppml.policy import load_policy
    from ppml.private_files import use_private_umask

    use_private_umask()
    resolved = policy.resolve()
    served = os.environ.get("PPML_POLICY")
    if served and Path(served).resolve() != resolved:
        raise input_error(
            "environment",
            "PPML_POLICY",
            f"the deployment serves {served}, not {policy}",
            "export the same PPML_POLICY for the daemon, the webserver and this command",
        )
    load_policy(resolved)  # refused in one line before anything is submitted
    os.environ["PPML_POLICY"] = str(resolved)
    from ppml_assets.bootstrap import bootstrap

    runs = bootstrap(workspace.resolve(), through, parse_day(as_of, "--as-of"), wait, report=console.print)
    console.print(f"Bootstrapped: {len(runs)} run(s) succeeded; the schedules keep the deployment going.")
