"""The ppml code location: every lifecycle stage, its checks, resources, schedules and sensors."""

import os

from dagster import (
    Definitions,
    EnvVar,
    load_asset_checks_from_modules,
    load_assets_from_modules,
    multiprocess_executor,
)

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
    """PPML_SOURCE=landing_zone (default) or sql (PPML_SOURCE_URL, PPML_SOURCE_TABLE)."""
    if os.environ.get("PPML_SOURCE", "landing_zone") == "sql":
        return SqlTableSource(
            url=EnvVar("PPML_SOURCE_URL"),
            table=os.environ.get("PPML_SOURCE_TABLE", "raw_records"),
            event_date_column=os.environ.get("PPML_SOURCE_EVENT_DATE_COLUMN", "event_date"),
        )
    return LandingZoneSource(root=os.environ.get("PPML_LANDING_ZONE", str(PPML_HOME / "landing")))


def build_resources() -> dict[str, object]:
    return {
        "io_manager": LocalFileIOManager(base_dir=str(PPML_HOME / "assets")),
        "asset_store": AssetStore(base_dir=str(PPML_HOME / "assets")),
        "policy": PolicyResource(path=str(POLICY_PATH)),
        "record_source": record_source_from_env(),
        "pseudonym_key": PseudonymizationKey(hmac_key=EnvVar("PPML_HMAC_KEY")),
        "mlflow": MlflowResource(
            tracking_uri=default_mlflow_tracking_uri(),
            artifact_location=os.environ.get("PPML_MLFLOW_ARTIFACTS") or (PPML_HOME / "mlflow" / "artifacts").as_uri(),
        ),
        "ledger": LedgerResource(url=default_ledger_url()),
        "paths": WorkspacePaths(home=str(PPML_HOME)),
    }


defs = Definitions(
    assets=load_assets_from_modules(STAGE_MODULES),
    asset_checks=load_asset_checks_from_modules(STAGE_MODULES),
    jobs=[requirements_job, collection_job, training_job, reevaluation_job],
    schedules=[daily_collection_schedule, weekly_retraining_schedule],
    sensors=[drift_sensor],
    resources=build_resources(),
    executor=multiprocess_executor,
)
