"""Dagster-native definition metadata of every policy asset, added in one place (``graph.py`` applies it).

Why centrally: the stage modules declare *what* an asset computes; how it appears in the Dagster UI (its group in
lifecycle order, owners, a code version, a lifecycle label, table metadata) is one convention, kept here so every
asset -- including those other modules add later -- gets it without touching their bodies.

- Groups are numbered (``01_requirements`` ... ``10_reporting``): the Dagster UI sorts groups alphabetically
  (dagster-io/dagster#20130) and has no group-order setting, so the number is what puts them in lifecycle order.
- Owners are Dagster ``team:`` owners per stage: who answers for the asset.
- ``code_version`` is ppml's version plus a hash of the asset function's source, so Dagster marks a
  materialization stale when the asset's own code changed (engines are versioned by the package version).
- ``dagster/row_count`` and ``dagster/column_schema`` of every table are added by the IO manager
  (:func:`table_metadata`), which is the one place that sees every DataFrame output.
"""

import hashlib
import inspect
import os
from collections.abc import Callable
from typing import Any

import pandas as pd
from dagster import MetadataValue, TableColumn, TableSchema

from ppml import __version__

#: The lifecycle stages in order: (group as declared, group as shown, owners, lifecycle step label).
STAGES: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("requirements", "01_requirements", ("team:data_protection",), "1 objectives and requirements"),
    ("collection", "02_collection", ("team:data_engineering",), "2 collection and de-identification"),
    ("anonymization", "03_anonymization", ("team:data_engineering", "team:data_protection"), "2 anonymization"),
    ("preparation", "04_preparation", ("team:ml_engineering",), "3 preparation"),
    ("training", "05_training", ("team:ml_engineering",), "4-5 private training"),
    ("evaluation", "06_evaluation", ("team:ml_engineering", "team:data_protection"), "6 evaluation"),
    ("compliance", "07_compliance", ("team:data_protection",), "6 compliance gate"),
    ("deployment", "08_deployment", ("team:ml_platform",), "7 deployment"),
    ("monitoring", "09_monitoring", ("team:ml_platform",), "7 monitoring"),
    ("reporting", "10_reporting", ("team:data_protection",), "8 records and reports"),
)
_BY_GROUP = {stage[0]: stage for stage in STAGES}
STAGE_TAG = "ppml/stage"


def lifecycle_group(group: str) -> str:
    """The group name shown in the UI: numbered in lifecycle order (an unknown group is kept as declared)."""
    stage = _BY_GROUP.get(group)
    return stage[1] if stage else group


def code_version(fn: Callable[..., Any]) -> str:
    """ppml's version and the first 12 hex digits of the SHA-256 of the function's source."""
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError):  # no source (e.g. built at run time): the package version alone
        return __version__
    return f"{__version__}+{hashlib.sha256(source.encode('utf-8')).hexdigest()[:12]}"


def asset_definition_options(fn: Callable[..., Any], group: str, options: dict[str, Any]) -> dict[str, Any]:
    """``@asset`` keyword arguments for owners, code version and lifecycle tag (explicit ones win); the
    description is the function's docstring, as Dagster takes it."""
    stage = _BY_GROUP.get(group)
    defaults: dict[str, Any] = {"code_version": code_version(fn)}
    if stage:
        defaults["owners"] = list(stage[2])
        defaults["tags"] = {STAGE_TAG: stage[3].replace(" ", "_")}
    return defaults | options


def table_metadata(value: Any) -> dict[str, Any]:
    """``dagster/row_count`` and ``dagster/column_schema`` of a table output ({} for anything else); for a
    multi-partition output (a dict of tables) the rows are summed and the first table's columns described."""
    tables = [value] if isinstance(value, pd.DataFrame) else []
    if isinstance(value, dict) and value and all(isinstance(v, pd.DataFrame) for v in value.values()):
        tables = list(value.values())
    if not tables:
        return {}
    schema = TableSchema(columns=[TableColumn(name=str(c), type=str(t)) for c, t in tables[0].dtypes.items()])
    return {
        "dagster/row_count": sum(len(table) for table in tables),
        "dagster/column_schema": MetadataValue.table_schema(schema),
    }


def mlflow_ui_base() -> str:
    """Where the MLflow UI is served (``ppml ui`` starts it on :5000); ``PPML_MLFLOW_UI_URL`` overrides."""
    return (os.environ.get("PPML_MLFLOW_UI_URL") or "http://127.0.0.1:5000").rstrip("/")


def mlflow_run_url(run_id: str) -> MetadataValue:
    """A link to an MLflow run's page in the MLflow UI (its ``/runs/<id>`` route finds the experiment)."""
    return MetadataValue.url(f"{mlflow_ui_base()}/#/runs/{run_id}")


def mlflow_artifact_url(run_id: str, artifact: str) -> MetadataValue:
    """A link to one of a run's artifacts in the MLflow UI (the report, evidence.json, a data-quality page)."""
    return MetadataValue.url(f"{mlflow_ui_base()}/#/runs/{run_id}/artifacts/{artifact}")


def mlflow_model_version_url(model_name: str, version: str | int) -> MetadataValue:
    """A link to a registered model version's page in the MLflow UI."""
    return MetadataValue.url(f"{mlflow_ui_base()}/#/models/{model_name}/versions/{version}")
