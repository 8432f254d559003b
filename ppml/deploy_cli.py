"""`ppml deploy ...`: the production launch sequence as commands (storage first, then the runs).

The commands act on the deployment the environment configures (DAGSTER_HOME with deploy/dagster.yaml,
MLFLOW_TRACKING_URI, PPML_LEDGER_URL; the embedded workspace under PPML_HOME when they are unset).
"""

from __future__ import annotations

import typer
from rich.console import Console

console = Console()

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
