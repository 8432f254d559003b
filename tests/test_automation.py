"""Schedules and the drift sensor, evaluated against a real Dagster instance."""

import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from dagster import RunRequest, SkipReason, build_schedule_context, build_sensor_context, instance_for_test

from sensors import daily_collection_schedule, drift_sensor, weekly_retraining_schedule
from tests.graph_support import graph_workspace, write_policy
from tests.support import TEST_FIRST_DAY, days


def test_weekly_retraining_targets_the_previous_day() -> None:
    context = build_schedule_context(scheduled_execution_time=datetime(2026, 5, 4, 3, 0))
    request = weekly_retraining_schedule(context)
    assert isinstance(request, RunRequest)
    assert request.partition_key == "2026-05-03"
    assert request.tags["ppml/trigger"] == "weekly_retraining"
    assert weekly_retraining_schedule.cron_schedule == "0 3 * * 1"  # from the policy's monitoring.retrain_cron
    assert weekly_retraining_schedule.job_name == "training_job"


def test_daily_collection_schedule_collects_yesterday() -> None:
    with instance_for_test() as instance:
        context = build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 3, 10, 1, 0))
        requests = list(daily_collection_schedule.evaluate_tick(context).run_requests or [])
    assert [r.partition_key for r in requests] == ["2026-03-09"]


def _drifted_copy(source: Path, target: Path) -> None:
    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    frame["age"] = (frame["age"].astype(int) + 30).clip(upper=90).astype(str)  # a much older population
    frame["hours_per_week"] = "12"
    target.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(target, index=False)


@pytest.mark.slow
def test_drift_sensor_requests_reevaluation_only_after_drift(tmp_path: Path, landing_zone: Path) -> None:
    window = days(TEST_FIRST_DAY, 3)
    landing = tmp_path / "landing"
    for day in [*window, "2026-03-04"]:
        shutil.copytree(landing_zone / f"event_date={day}", landing / f"event_date={day}")
    _drifted_copy(
        landing_zone / "event_date=2026-03-05" / "records.csv", landing / "event_date=2026-03-05" / "records.csv"
    )
    policy = write_policy(
        tmp_path,
        evaluation__audit_canaries=0,
        evaluation__reference_models=0,
        objectives__min_accuracy=0.5,
        objectives__min_roc_auc=0.5,
        objectives__max_utility_gap=0.5,
    )
    workspace = graph_workspace(tmp_path / "home", landing, policy)

    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        assert workspace.collect(instance, window[0], window[-1]).success
        # Three days are ~860 training rows: at epsilon 1 the DP model is a constant predictor, which the gate
        # rightly refuses (balanced accuracy 0.5). The subject here is drift, so only the trained and evaluated
        # model is required, not its promotion.
        trained = workspace.run("training_job", instance, partition_key=window[-1])
        assert trained.asset_materializations_for_node("model_evaluation")
        _assert_serving_references(workspace, trained)
        sensor_resources = {"asset_store": workspace.resources["asset_store"], "policy": workspace.resources["policy"]}

        assert workspace.run("collection_job", instance, partition_key="2026-03-04").success
        context = build_sensor_context(instance=instance, resources=sensor_resources)
        result = drift_sensor(context)
        assert isinstance(result, SkipReason) and "no drift in 2026-03-04" in result.skip_message

        assert workspace.run("collection_job", instance, partition_key="2026-03-05").success
        context = build_sensor_context(instance=instance, resources=sensor_resources, cursor=context.cursor)
        request = drift_sensor(context)
        assert isinstance(request, RunRequest)
        assert request.partition_key == window[-1]  # re-evaluate the model trained as of the window's last day
        assert request.tags["ppml/drifted_partition"] == "2026-03-05"
        assert "age" in request.tags["ppml/drifted_features"]
        assert float(request.tags["ppml/max_psi"]) > 0.2

        context = build_sensor_context(instance=instance, resources=sensor_resources, cursor="2026-03-05")
        assert isinstance(drift_sensor(context), SkipReason)  # the same partition is compared once

        # the requested run re-evaluates the deployed model on the drifted partition
        rerun = workspace.run("reevaluation_job", instance, partition_key=request.partition_key, tags=request.tags)
        evaluation = rerun.asset_materializations_for_node("model_evaluation")[0].metadata
        drifted = evaluation["drifted_partition"].value
        assert drifted["partition"] == "2026-03-05" and drifted["records"] > 300
        assert drifted["features"] == "serving spec"  # the release's handle generalizations, as served
        assert 0.0 <= drifted["accuracy"] <= 1.0


def _assert_serving_references(workspace, trained) -> None:  # type: ignore[no-untyped-def]
    """dp_model records the training split's released-label counts in the serving spec, model_evaluation the test
    split's score distribution: what serving monitoring compares the served inputs and predictions with."""
    from ppml.serving.monitoring import input_reference_of, load_score_reference
    from ppml.serving.spec import load_serving_spec

    run_id = trained.asset_materializations_for_node("dp_model")[0].metadata["mlflow_run_id"].value
    client = workspace.resources["mlflow"].client()
    spec = load_serving_spec(client, run_id, "dp_model")
    reference = input_reference_of(spec, "dp_model")
    assert reference["rows"] > 0 and set(reference["counts"]) <= set(spec["columns"])
    evaluation = trained.asset_materializations_for_node("model_evaluation")[0]
    scores = load_score_reference(client, run_id)
    assert scores is not None and scores["rows"] > 0 and sum(scores["counts"].values()) == scores["rows"]
    assert evaluation is not None
