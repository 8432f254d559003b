"""The ppml code location: every lifecycle stage, its checks, resources, schedules and sensors."""

import os
from pathlib import Path

from dagster import (
    Definitions,
    EnvVar,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    multiprocess_executor,
)

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
    training,
)
from ppml_assets.jobs import collection_job, reevaluation_job, requirements_job, training_job
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
from sensors import daily_collection_schedule, drift_sensor, weekly_retraining_schedule

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


def build_resources(
    home: Path,
    policy_path: Path,
    record_source: RecordSource,
    hmac_key: str | EnvVar,
    mlflow_tracking_uri: str,
    mlflow_artifacts: str,
    ledger_url: str,
) -> dict[str, object]:
    """Every resource the stages need, for one workspace (the code location's, or a test's private one)."""
    return {
        "io_manager": LocalFileIOManager(base_dir=str(home / "assets")),
        "asset_store": AssetStore(base_dir=str(home / "assets")),
        "policy": PolicyResource(path=str(policy_path)),
        "record_source": record_source,
        "pseudonym_key": PseudonymizationKey(hmac_key=hmac_key),
        "mlflow": MlflowResource(tracking_uri=mlflow_tracking_uri, artifact_location=mlflow_artifacts),
        "ledger": LedgerResource(url=ledger_url),
        "paths": WorkspacePaths(home=str(home)),
    }


def resources_from_env() -> dict[str, object]:
    """The code location's resources: embedded defaults under PPML_HOME, overridden by environment variables."""
    return build_resources(
        PPML_HOME,
        POLICY_PATH,
        record_source_from_env(),
        EnvVar("PPML_HMAC_KEY"),
        default_mlflow_tracking_uri(),
        os.environ.get("PPML_MLFLOW_ARTIFACTS") or (PPML_HOME / "mlflow" / "artifacts").as_uri(),
        default_ledger_url(),
    )


defs = Definitions(
    assets=load_assets_from_modules(STAGE_MODULES),
    asset_checks=load_asset_checks_from_modules(STAGE_MODULES),
    jobs=[requirements_job, collection_job, training_job, reevaluation_job],
    schedules=[daily_collection_schedule, weekly_retraining_schedule],
    sensors=[drift_sensor],
    resources=resources_from_env(),
    executor=multiprocess_executor,
)
