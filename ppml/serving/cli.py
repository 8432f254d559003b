"""``ppml serve`` and ``ppml rollback``: the production model over HTTP, and the alias moved back."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

DEMO_KEY_FILE = "serve_demo_api_key"


def _api_keys(home: Path, demo: bool) -> dict[str, str]:
    """The keys from the environment; only ``--demo`` may generate one (kept 0600 under PPML_HOME/secrets)."""
    from ppml.private_files import private_dir
    from ppml.serving.app import API_KEY_ENV, api_keys_from_env

    if demo and not os.environ.get(API_KEY_ENV):
        key_file = home / "secrets" / DEMO_KEY_FILE
        if not key_file.exists():
            private_dir(key_file.parent)
            descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        typer.echo(f"DEMO API KEY: {API_KEY_ENV} is not set; the demo key is in {key_file} (mode 0600)")
        return api_keys_from_env({API_KEY_ENV: key_file.read_text().strip()})
    return api_keys_from_env(os.environ)


def serve_command(
    policy: Annotated[Path, typer.Option(help="The policy whose production model is served.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    demo: Annotated[bool, typer.Option(help="Generate an API key when PPML_SERVE_API_KEY is unset.")] = False,
) -> None:
    """Serve the policy's production model version (OpenAPI docs at /docs) until stopped."""
    import torch
    import uvicorn
    from mlflow import MlflowClient

    from ppml.policy import load_policy
    from ppml.serving.app import RegistryFollower, create_app
    from ppml.serving.prediction_log import PredictionLog, log_url_from_env
    from ppml.serving.registry import load_production
    from ppml.workspace import Workspace, default_home

    loaded = load_policy(policy)
    home = default_home()
    keys = _api_keys(home, demo)
    # one intra-op thread: requests run in parallel on the server's threads, each matrix is small, and torch's
    # own thread pool on top of them only contends for the cores (bench/serving_bench.py)
    torch.set_num_threads(1)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = MlflowClient(tracking_uri=Workspace(home).mlflow_tracking_uri)
    served = load_production(client, f"ppml-{loaded.policy.name}")
    prediction_log = PredictionLog(log_url_from_env(home))
    follower = RegistryFollower(client, served, loaded.policy.serving.poll_seconds)
    app = create_app(loaded, follower, prediction_log, keys)
    typer.echo(f"serving {served.model_name} v{served.version} on http://{host}:{port} (OpenAPI docs: /docs)")
    follower.start()
    try:
        uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
    finally:
        follower.stop()
        prediction_log.close()


def rollback_command(
    policy: Annotated[Path, typer.Option(help="The policy whose production alias moves back.")],
) -> None:
    """Move the production alias back to the previously promoted version (a running ppml serve follows)."""
    from mlflow import MlflowClient

    from ppml.deployment import rollback
    from ppml.policy import load_policy
    from ppml.workspace import Workspace, default_home

    loaded = load_policy(policy)
    client = MlflowClient(tracking_uri=Workspace(default_home()).mlflow_tracking_uri)
    name = f"ppml-{loaded.policy.name}"
    left, target = rollback(client, name)
    typer.echo(f"{name}: production moved back from v{left} to v{target}")


__all__ = ["rollback_command", "serve_command"]
