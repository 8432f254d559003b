"""The served model's monitoring sensor and schedule.

``serving_monitoring_sensor`` evaluates the prediction log of the version in production whenever new rows
arrived (its cursor is the log's newest row id) and requests, when a policy threshold is passed:

- a re-evaluation (``reevaluation_job`` for the as-of day the served version was trained on) on input drift or
  prediction drift, once per version and day;
- a retraining (``training_job`` as of yesterday, like the weekly schedule: its ``dp_model`` reserves and charges
  the lifetime ledger as every training does, and is refused when the budget would be exceeded) when the accuracy
  from feedback labels is below the policy's objective or the version is older than ``max_model_age_days``;
- with either, a ``serving_monitoring_job`` run, so the verdict that triggered them is materialized in the UI.

``serving_monitoring_schedule`` materializes the monitoring asset hourly (stopped until an operator starts it).
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dagster import RunRequest, SensorEvaluationContext, SensorResult, SkipReason

from ppml.errors import PPMLError
from ppml.serving.monitoring import REEVALUATE, RETRAIN, monitor_production
from ppml.serving.prediction_log import PredictionLog, log_url_from_env
from resources import MlflowResource, PolicyResource, WorkspacePaths


def _requests(report: dict, jobs: dict[str, str], today: str, yesterday: str) -> list[RunRequest]:
    """The runs a report's actions call for (run keys make each at most once per version and day)."""
    version = f"{report['model_name']}-v{report['model_version']}"
    actions = report["actions"]
    requests: list[RunRequest] = []
    if REEVALUATE in actions and report["trained_as_of"]:
        drift = report["input_drift"] or {}
        requests.append(
            RunRequest(
                job_name=jobs["reevaluation_job"],
                run_key=f"serving-reevaluation-{version}-{today}",
                partition_key=report["trained_as_of"],
                tags={
                    "ppml/trigger": "serving_drift",
                    "ppml/served_version": report["model_version"],
                    "ppml/max_psi": f"{drift.get('max_psi', 0.0):.4f}",
                    "ppml/drifted_features": ",".join(drift.get("drifted_features", []))[:200],
                    "ppml/reasons": "; ".join(actions[REEVALUATE])[:200],
                },
            )
        )
    if RETRAIN in actions:
        requests.append(
            RunRequest(
                job_name=jobs["training_job"],
                run_key=f"serving-retraining-{version}-{yesterday}",
                partition_key=yesterday,
                tags={
                    "ppml/trigger": "serving_monitoring",
                    "ppml/served_version": report["model_version"],
                    "ppml/reasons": "; ".join(actions[RETRAIN])[:200],
                },
            )
        )
    if requests:
        requests.append(RunRequest(job_name=jobs["serving_monitoring_job"], run_key=f"serving-monitoring-{today}"))
    return requests


def serving_monitoring_sensor_fn(jobs: dict[str, str]):  # type: ignore[no-untyped-def]
    """The sensor body for one graph's job names (``jobs`` maps unprefixed to the graph's names)."""

    def serving_monitoring(
        context: SensorEvaluationContext, policy: PolicyResource, mlflow: MlflowResource, paths: WorkspacePaths
    ) -> Any:
        """Request re-evaluation or retraining when the served version passes a monitoring threshold."""
        log = PredictionLog(log_url_from_env(Path(paths.home)))
        try:
            newest = log.last_row_id()
            if newest == 0:
                return SkipReason("nothing served yet: the prediction log is empty")
            if context.cursor == str(newest):
                return SkipReason(f"no new predictions since row {newest}")
            report = monitor_production(mlflow.client(), log, policy.load().policy)
        except PPMLError as error:  # nothing in production, or a version without references: said, not raised
            return SkipReason(str(error))
        finally:
            log.close()
        now = datetime.now(UTC)
        requests = _requests(report, jobs, now.date().isoformat(), (now - timedelta(days=1)).date().isoformat())
        summary = report.get("drift_status") or (
            f"max input PSI {report['input_drift']['max_psi']:.3f}, accuracy: {report['accuracy']['status']}"
        )
        if not requests:
            context.update_cursor(str(newest))
            if report["actions"]:  # drift, but the version's training run has no as-of lineage tag
                return SkipReason(f"v{report['model_version']}: {report['actions']}, but its as-of day is unknown")
            return SkipReason(f"v{report['model_version']}: no threshold passed ({summary})")
        context.log.info(f"v{report['model_version']}: {report['actions']}")
        return SensorResult(run_requests=requests, cursor=str(newest))

    return serving_monitoring
