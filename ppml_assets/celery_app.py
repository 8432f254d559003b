"""Celery scale-out (the ``celery`` extra): the executor settings ppml's celery jobs use, and the workers' app.

A run of a celery job (``celery_collection_job``) stays one Dagster run, but each step is a Celery task on the
broker's ``dagster`` queue, executed by whichever worker takes it; workers on several hosts share the Dagster
instance (PostgreSQL), MLflow, the ledger and the asset storage (``PPML_ASSET_BASE``). Start workers with the same
environment as the code location::

    celery -A ppml_assets.celery_app worker -Q dagster -c 1 -n worker1@%h

Tasks are acknowledged only when they finish and each worker reserves one at a time (``task_acks_late``,
prefetch 1): a busy worker never hoards the next step while an idle one waits, and a worker that dies mid-step
leaves its task on the queue. The broker and result backend come from the environment, named by reference so
that a password in their URLs is never stored in the run's configuration.
"""

from __future__ import annotations

import os
from typing import Any

BROKER_ENV = "PPML_CELERY_BROKER"
BACKEND_ENV = "PPML_CELERY_BACKEND"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_BACKEND = "rpc://"
CONFIG_SOURCE: dict[str, Any] = {"task_acks_late": True, "worker_prefetch_multiplier": 1}


def _setting(name: str, default: str) -> Any:
    return {"env": name} if os.environ.get(name) else default


def celery_executor_config() -> dict[str, Any]:
    """The ``celery_executor`` configuration the jobs are built with (workers build their app from the same)."""
    return {
        "broker": _setting(BROKER_ENV, DEFAULT_BROKER),
        "backend": _setting(BACKEND_ENV, DEFAULT_BACKEND),
        "config_source": CONFIG_SOURCE,
    }


def worker_app() -> Any:
    """The Celery app for ``celery -A ppml_assets.celery_app worker``: dagster-celery's step task, our settings."""
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    executor = CeleryExecutor.for_cli(
        broker=os.environ.get(BROKER_ENV) or DEFAULT_BROKER,
        backend=os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND,
        config_source=CONFIG_SOURCE,
    )
    app = make_app(executor.app_args())
    create_task(app)
    return app


def __getattr__(name: str) -> Any:
    """``app`` is built on first access (what ``celery -A`` reads), so importing this module needs no celery."""
    if name == "app":
        globals()["app"] = worker_app()
        return globals()["app"]
    raise AttributeError(name)
