"""Schedules and sensors over the ppml jobs.

- ``daily_collection_schedule`` collects and de-identifies yesterday's partition every night.
- ``weekly_retraining_schedule`` retrains as of the previous day on the policy's cron (default Monday 03:00);
  the privacy-budget ledger refuses the run when the lifetime budget would be exceeded.
- ``drift_sensor`` compares the newest collected partition with the training reference (PSI per feature) and
  requests a re-evaluation run when the largest PSI passes the policy's threshold.
- ``serving_monitoring_sensor`` and ``serving_monitoring_schedule`` watch the served model (sensors/serving.py).

``automation_for`` builds the three for one policy graph (its jobs, its policy's cron, its resources); the
module-level ones are the single-policy default graph's.
"""

from datetime import timedelta
from typing import Any

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    build_schedule_from_partitioned_job,
    schedule,
    sensor,
)

from ppml.monitoring import drift_against
from ppml.policy import load_policy
from ppml_assets.graph import DEFAULT_GRAPH, PolicyGraph, rename_resources
from ppml_assets.jobs import collection_job, reevaluation_job, serving_monitoring_job, training_job
from resources import AssetStore, PolicyResource
from sensors.serving import serving_monitoring_sensor_fn


def weekly_retraining(context: ScheduleEvaluationContext) -> RunRequest:
    """Retrain as of the day before the scheduled time (that day's collection has finished by then)."""
    as_of = (context.scheduled_execution_time - timedelta(days=1)).date().isoformat()
    return RunRequest(
        run_key=f"weekly-retraining-{as_of}", partition_key=as_of, tags={"ppml/trigger": "weekly_retraining"}
    )


def _latest_partition(context: SensorEvaluationContext, asset_store: AssetStore, asset: str) -> str | None:
    event = context.instance.get_latest_materialization_event(asset_store.asset_key(asset))
    if event is None or event.asset_materialization is None:
        return None
    return event.asset_materialization.partition


def drift(context: SensorEvaluationContext, asset_store: AssetStore, policy: PolicyResource):  # type: ignore[no-untyped-def]
    """Request re-evaluation of the latest trained model when the newest partition has drifted."""
    newest = _latest_partition(context, asset_store, "raw_records")
    trained_as_of = _latest_partition(context, asset_store, "drift_reference")
    if newest is None or trained_as_of is None:
        return SkipReason("nothing to compare yet: collect data and train a model first")
    if context.cursor == newest:
        return SkipReason(f"partition {newest} was already compared")
    reference = asset_store.read_stored("drift_reference", trained_as_of)
    # the de-identified partition: its raw copy is gone once de-identification passed (ppml.raw_copies)
    current = asset_store.read_stored("deidentified_records", newest)
    threshold = policy.load().policy.monitoring.drift_psi_threshold
    report = drift_against(reference, current, threshold)
    context.update_cursor(newest)
    if not report.drifted:
        return SkipReason(f"no drift in {newest}: max PSI {report.max_psi:.3f} <= {threshold}")
    context.log.info(f"drift in {newest}: {report.drifted_features} (max PSI {report.max_psi:.3f})")
    return RunRequest(
        run_key=f"drift-{newest}-vs-{trained_as_of}",
        partition_key=trained_as_of,
        tags={
            "ppml/trigger": "drift",
            "ppml/drifted_partition": newest,
            "ppml/max_psi": f"{report.max_psi:.4f}",
            "ppml/drifted_features": ",".join(report.drifted_features)[:200],
        },
    )


def automation_for(graph: PolicyGraph, jobs: dict[str, Any]) -> list[Any]:
    """Daily collection, weekly retraining on the graph's policy cron, the drift sensor and the serving monitoring
    sensor and schedule, for one graph (``jobs`` by their unprefixed names); all start stopped, as an operator
    turns them on."""
    cron = load_policy(graph.policy_path, check_files=False).policy.monitoring.retrain_cron
    collection: ScheduleDefinition = build_schedule_from_partitioned_job(
        jobs["collection_job"],
        hour_of_day=1,
        name=graph.name("daily_collection_schedule"),
        default_status=DefaultScheduleStatus.STOPPED,
    )
    retraining = schedule(
        job=jobs["training_job"],
        cron_schedule=cron,
        name=graph.name("weekly_retraining_schedule"),
        default_status=DefaultScheduleStatus.STOPPED,
    )(weekly_retraining)
    drift_sensor_def: SensorDefinition = sensor(
        job=jobs["reevaluation_job"],
        minimum_interval_seconds=3600,
        name=graph.name("drift_sensor"),
        default_status=DefaultSensorStatus.STOPPED,
    )(rename_resources(drift, graph))
    return [collection, retraining, drift_sensor_def, *serving_automation_for(graph, jobs)]


def serving_automation_for(graph: PolicyGraph, jobs: dict[str, Any]) -> list[Any]:
    """The served model's monitoring sensor (re-evaluation, retraining) and hourly monitoring schedule."""
    targets = ["reevaluation_job", "training_job", "serving_monitoring_job"]
    monitoring_sensor: SensorDefinition = sensor(
        jobs=[jobs[name] for name in targets],
        minimum_interval_seconds=300,
        name=graph.name("serving_monitoring_sensor"),
        default_status=DefaultSensorStatus.STOPPED,
    )(rename_resources(serving_monitoring_sensor_fn({name: jobs[name].name for name in targets}), graph))
    monitoring_schedule = ScheduleDefinition(
        job=jobs["serving_monitoring_job"],
        cron_schedule="17 * * * *",
        name=graph.name("serving_monitoring_schedule"),
        default_status=DefaultScheduleStatus.STOPPED,
    )
    return [monitoring_sensor, monitoring_schedule]


(
    daily_collection_schedule,
    weekly_retraining_schedule,
    drift_sensor,
    serving_monitoring_sensor,
    serving_monitoring_schedule,
) = automation_for(
    DEFAULT_GRAPH,
    {
        "collection_job": collection_job,
        "training_job": training_job,
        "reevaluation_job": reevaluation_job,
        "serving_monitoring_job": serving_monitoring_job,
    },
)
