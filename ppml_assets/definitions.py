"""The ppml code location: every lifecycle stage, its checks, resources, schedules and sensors.

One graph per policy (ppml_assets/graph.py): the single PPML_POLICY (or the bundled policy) unprefixed, or every
policy in PPML_POLICY_DIR side by side, each under its own key prefix, groups, jobs, schedules, sensor and
policy, asset-store and report resources.
"""

import os
from pathlib import Path
from typing import Any

from dagster import Definitions, EnvVar, multiprocess_executor

from ppml.errors import input_error
from ppml_assets import (
    anonymization,
    collection,
    compliance,
    deidentification,
    deployment,
    evaluation,
    monitoring,
    preparation,
    reporting,
    requirements,
    serving_monitoring,
    training,
)
from ppml_assets.graph import DEFAULT_GRAPH, PolicyGraph, graph_assets, policy_graphs_from_env
from ppml_assets.jobs import (
    celery_jobs,
    collection_job,
    jobs_for,
    reevaluation_job,
    requirements_job,
    serving_monitoring_job,
    training_job,
)
from ppml_assets.settings import POLICY_PATH, PPML_HOME, default_ledger_url, default_mlflow_tracking_uri
from resources import (
    AssetStore,
    LandingZoneSource,
    LedgerResource,
    LocalFileIOManager,
    MlflowResource,
    PolicyResource,
    PseudonymizationKey,
    RecordSource,
    SqlTableSource,
    WorkspacePaths,
)
from sensors import (
    daily_collection_schedule,
    drift_sensor,
    serving_monitoring_schedule,
    serving_monitoring_sensor,
    weekly_retraining_schedule,
)
from sensors.automation import automation_for

STAGE_MODULES = [
    requirements,
    collection,
    deidentification,
    anonymization,
    preparation,
    training,
    evaluation,
    compliance,
    deployment,
    reporting,
    monitoring,
    serving_monitoring,
]


def record_source_from_env() -> RecordSource:
    """PPML_SOURCE=landing_zone (default) or sql (PPML_SOURCE_URL, PPML_SOURCE_TABLE); refused in one line."""
    kind = os.environ.get("PPML_SOURCE") or "landing_zone"
    if kind not in ("landing_zone", "sql"):
        raise input_error(
            "environment", "PPML_SOURCE", f"unknown source kind '{kind}'", "export PPML_SOURCE=landing_zone or sql"
        )
    if kind == "sql":
        if not os.environ.get("PPML_SOURCE_URL", "").strip():
            raise input_error(
                "environment",
                "PPML_SOURCE_URL",
                "PPML_SOURCE=sql but no database URL is set",
                "export PPML_SOURCE_URL, e.g. postgresql+psycopg2://user@host:5432/db",
            )
        _check_database_url(os.environ["PPML_SOURCE_URL"])
        return SqlTableSource(
            url=EnvVar("PPML_SOURCE_URL"),
            table=os.environ.get("PPML_SOURCE_TABLE", "raw_records"),
            event_date_column=os.environ.get("PPML_SOURCE_EVENT_DATE_COLUMN", "event_date"),
        )
    return LandingZoneSource(root=os.environ.get("PPML_LANDING_ZONE", str(PPML_HOME / "landing")))


def _check_database_url(url: str) -> None:
    """A malformed URL or a dialect without a driver fails here, before any run, and never echoes the URL."""
    import sqlalchemy as sa

    try:
        sa.engine.make_url(url).get_dialect()
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as exc:
        raise input_error(
            "environment",
            "PPML_SOURCE_URL",
            f"not a usable SQLAlchemy URL ({type(exc).__name__})",
            "export it as dialect+driver://user@host:port/database with an installed driver",
        ) from None


def shared_resources(
    home: Path,
    record_source: RecordSource,
    hmac_key: str | EnvVar,
    mlflow_tracking_uri: str,
    mlflow_artifacts: str,
    ledger_url: str,
    asset_base: str | None = None,
) -> dict[str, object]:
    """The resources every policy graph shares: source, key, MLflow, the ledger (scoped by dataset.id) and the IO
    manager (which stores by asset key, so prefixed graphs write under ``assets/<prefix>/``). ``asset_base``
    (default ``home/assets``) may be a shared path or an fsspec URL that workers on several hosts see."""
    return {
        "io_manager": LocalFileIOManager(base_dir=asset_base or str(home / "assets")),
        "record_source": record_source,
        "pseudonym_key": PseudonymizationKey(hmac_key=hmac_key),
        "mlflow": MlflowResource(tracking_uri=mlflow_tracking_uri, artifact_location=mlflow_artifacts),
        "ledger": LedgerResource(url=ledger_url),
    }


def graph_resources(
    graph: PolicyGraph,
    home: Path,
    policy_path: Path | None = None,
    asset_base: str | None = None,
    checkpoint_base: str | None = None,
) -> dict[str, object]:
    """One graph's own resources, under its resource keys: its policy, its asset store and its report and
    checkpoint folders (``reports/<prefix>/<as-of>/``)."""
    return {
        graph.name("policy"): PolicyResource(path=str(policy_path or graph.policy_path)),
        graph.name("asset_store"): AssetStore(base_dir=asset_base or str(home / "assets"), key_prefix=graph.prefix),
        graph.name("paths"): WorkspacePaths(home=str(home), scope=graph.prefix, checkpoint_base=checkpoint_base),
    }


def build_resources(
    home: Path,
    policy_path: Path,
    record_source: RecordSource,
    hmac_key: str | EnvVar,
    mlflow_tracking_uri: str,
    mlflow_artifacts: str,
    ledger_url: str,
    asset_base: str | None = None,
    checkpoint_base: str | None = None,
) -> dict[str, object]:
    """Every resource the default graph needs, for one workspace (the code location's, or a test's private one)."""
    shared = shared_resources(
        home, record_source, hmac_key, mlflow_tracking_uri, mlflow_artifacts, ledger_url, asset_base
    )
    return shared | graph_resources(DEFAULT_GRAPH, home, policy_path, asset_base, checkpoint_base)


def resources_from_env(graphs: list[PolicyGraph]) -> dict[str, object]:
    """The code location's resources: embedded defaults under PPML_HOME, overridden by environment variables."""
    asset_base, checkpoint_base = shared_locations_from_env()
    resources = shared_resources(
        PPML_HOME,
        record_source_from_env(),
        EnvVar("PPML_HMAC_KEY"),
        default_mlflow_tracking_uri(),
        os.environ.get("PPML_MLFLOW_ARTIFACTS") or (PPML_HOME / "mlflow" / "artifacts").as_uri(),
        default_ledger_url(),
        asset_base,
    )
    for graph in graphs:
        policy_path = POLICY_PATH if graph == DEFAULT_GRAPH else None
        resources |= graph_resources(graph, PPML_HOME, policy_path, asset_base, checkpoint_base)
    return resources


def shared_locations_from_env() -> tuple[str | None, str | None]:
    """PPML_ASSET_BASE (a path or an fsspec URL) and PPML_CHECKPOINT_BASE (a path), refused at load when unusable."""
    from ppml.locations import local_directory, resolve_location

    asset_base = os.environ.get("PPML_ASSET_BASE", "").strip() or None
    checkpoint_base = os.environ.get("PPML_CHECKPOINT_BASE", "").strip() or None
    if asset_base:
        resolve_location(asset_base, "PPML_ASSET_BASE")
    if checkpoint_base:
        local_directory(checkpoint_base, "PPML_CHECKPOINT_BASE")
    return asset_base, checkpoint_base


def graph_definitions(graph: PolicyGraph) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """One graph's assets, checks, jobs and automation (the default graph's are the module-level objects)."""
    assets, checks = graph_assets(graph)
    if graph == DEFAULT_GRAPH:
        jobs = [requirements_job, collection_job, training_job, reevaluation_job, serving_monitoring_job]
        automation = [
            daily_collection_schedule,
            weekly_retraining_schedule,
            drift_sensor,
            serving_monitoring_sensor,
            serving_monitoring_schedule,
        ]
        return assets, checks, [*jobs, *celery_jobs(graph)], automation
    jobs = jobs_for(graph)
    unprefixed = {job.name.removeprefix(graph.name("")): job for job in jobs}
    return assets, checks, [*jobs, *celery_jobs(graph)], automation_for(graph, unprefixed)


def build_definitions(graphs: list[PolicyGraph], resources: dict[str, object]) -> Definitions:
    """The code location for the given policy graphs, side by side in one Definitions."""
    assets: list[Any] = []
    checks: list[Any] = []
    jobs: list[Any] = []
    automation: list[Any] = []
    for graph in graphs:
        graph_parts = graph_definitions(graph)
        for collected, part in zip((assets, checks, jobs, automation), graph_parts, strict=True):
            collected.extend(part)
    return Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        schedules=[item for item in automation if not hasattr(item, "sensor_type")],
        sensors=[item for item in automation if hasattr(item, "sensor_type")],
        resources=resources,
        executor=multiprocess_executor,
    )


POLICY_GRAPHS = policy_graphs_from_env()
defs = build_definitions(POLICY_GRAPHS, resources_from_env(POLICY_GRAPHS))
