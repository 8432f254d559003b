"""Step 7d: the served model's monitoring over the prediction log, visible in the Dagster UI (asset metadata).

Not partitioned: the log is one live stream, and the asset is the state of the version in production now (its
rows of the policy's serving window). Only aggregates are stored; groups below ``monitoring.min_group_rows`` are
suppressed by the engine (ppml.serving.monitoring).
"""

from pathlib import Path
from typing import Any

from dagster import AssetExecutionContext, AssetKey, MetadataValue

from ppml.serving.monitoring import monitor_production
from ppml.serving.prediction_log import PredictionLog, log_url_from_env
from ppml_assets.graph import policy_asset
from resources import MlflowResource, PolicyResource, WorkspacePaths


def production_monitoring(policy: PolicyResource, mlflow: MlflowResource, paths: WorkspacePaths) -> dict:
    """The engine's report for the production version, from the log ``ppml serve`` writes for this workspace."""
    log = PredictionLog(log_url_from_env(Path(paths.home)))
    try:
        return monitor_production(mlflow.client(), log, policy.load().policy)
    finally:
        log.close()


def monitoring_metadata(report: dict) -> dict[str, Any]:
    """The report's headline numbers as Dagster metadata (the whole report as JSON beside them)."""
    drift, prediction, accuracy = report["input_drift"], report["prediction_drift"], report["accuracy"]
    return {
        "model_version": f"{report['model_name']} v{report['model_version']}",
        "served_rows": report["rows"],
        "max_input_psi": drift["max_psi"] if drift else None,
        "drifted_features": MetadataValue.json(drift["drifted_features"] if drift else []),
        "prediction_psi": prediction.get("psi") if prediction else None,
        "feedback_labels": accuracy["labels"],
        "feedback_accuracy": accuracy["accuracy"],
        "accuracy_status": accuracy["status"],
        "version_age_days": report["age"]["days"],
        "actions": MetadataValue.json(report["actions"]),
        "status": report.get("drift_status") or ("action needed" if report["actions"] else "ok"),
        "report": MetadataValue.json(report),
    }


def latest_serving_monitoring(instance: Any, key: AssetKey) -> dict | None:
    """The latest monitoring report of the served model, for the compliance report (None: never monitored)."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return None
    report = event.asset_materialization.metadata.get("report")
    return dict(report.value) if report is not None else None


@policy_asset(group_name="monitoring", partitioned=False, kinds={"sql", "mlflow"})
def serving_monitoring(
    context: AssetExecutionContext, policy: PolicyResource, mlflow: MlflowResource, paths: WorkspacePaths
) -> dict:
    """Input drift per feature (PSI of the served released labels vs the version's training split), prediction
    drift (served vs evaluation scores), accuracy and per-group accuracy from feedback labels (with counts,
    small groups suppressed), and the served version's age against the policy's retraining limit."""
    report = production_monitoring(policy, mlflow, paths)
    context.add_output_metadata(monitoring_metadata(report))
    return report
