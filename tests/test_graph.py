"""The Dagster graph: definitions load, single-run backfills, bad partitions, policy versioning, end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test

from tests.graph_support import graph_workspace, write_policy
from tests.support import TEST_FIRST_DAY, days

GATE_CHECKS = {
    "k_anonymity",
    "l_diversity",
    "t_closeness",
    "suppression_limit",
    "reidentification_risk",
    "epsilon_within_target",
    "lifetime_budget",
    "membership_inference_auc",
    "membership_inference_tpr_at_low_fpr",
    "empirical_epsilon_audit",
    "utility_accuracy",
    "utility_roc_auc",
    "utility_balanced_accuracy_above_trivial",
    "utility_roc_auc_above_trivial",
    "utility_gap_vs_baseline",
    "group_error_rate_gap",
    "no_identifier_leakage",
}
LIFECYCLE_ASSETS = {
    "privacy_requirements",
    "raw_records",
    "deidentified_records",
    "anonymized_records",
    "dp_statistics",
    "cleaned_records",
    "training_features",
    "dp_model",
    "non_private_baseline",
    "privacy_budget",
    "model_evaluation",
    "privacy_evaluation",
    "privacy_audit",
    "compliance_status",
    "registered_model",
    "compliance_report",
    "drift_reference",
    "serving_monitoring",
}


def test_definitions_load_with_every_stage_and_blocking_gate() -> None:
    from ppml_assets.definitions import defs

    repository = defs.get_repository_def()
    keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert keys >= LIFECYCLE_ASSETS
    checks = {check.name: check for assets_def in defs.asset_checks for check in assets_def.check_specs}
    assert set(checks) >= GATE_CHECKS
    assert all(checks[name].blocking for name in GATE_CHECKS)
    for name in [
        "raw_records_expectations",
        "no_raw_direct_identifiers",
        "anonymized_records_expectations",
        "privacy_models_hold",
        "cleaned_records_expectations",
    ]:
        assert checks[name].blocking
    assert {"collection_job", "training_job", "reevaluation_job", "requirements_job", "serving_monitoring_job"} <= {
        job.name for job in repository.get_all_jobs()
    }
    # the training asset asks the deployment for a GPU in a way it can act on
    dp_model = defs.get_assets_def("dp_model")
    assert dp_model.op.pool == "gpu" and dp_model.op.tags["ppml/gpu"] == "1"


@pytest.fixture
def workspace(tmp_path: Path, landing_zone: Path):  # type: ignore[no-untyped-def]
    policy = write_policy(tmp_path, evaluation__audit_canaries=0, evaluation__reference_models=1)
    return graph_workspace(tmp_path / "home", landing_zone, policy)


def test_backfill_of_three_partitions_runs_once_and_honours_erasure(workspace, landing_zone: Path) -> None:  # type: ignore[no-untyped-def]
    three = days(TEST_FIRST_DAY, 3)
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        result = workspace.collect(instance, three[0], three[-1])
        assert result.success
        assert len(instance.get_runs()) == 2  # one run for the three partitions
        for asset in ("raw_records", "deidentified_records"):
            materialized = instance.get_materialized_partitions(AssetKey(asset))
            assert materialized == set(three)
        evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert evaluations == {"raw_records_expectations": True, "no_raw_direct_identifiers": True}
        metadata = result.asset_materializations_for_node("raw_records")[0].metadata
        per_day = metadata["rows_per_partition"].value
        assert set(per_day) == set(three)
        erased = sum(day["excluded_by_erasure"] for day in per_day.values())
        assert metadata["rows_excluded_by_erasure"].value == erased
    stored = sorted(p.name for p in (workspace.home / "assets" / "deidentified_records").iterdir())
    assert stored == [f"{d}.parquet" for d in three]


def test_partition_without_a_file_fails_and_writes_nothing(workspace) -> None:  # type: ignore[no-untyped-def]
    missing_day = "2026-04-25"  # beyond the test landing zone
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        result = workspace.run("collection_job", instance, partition_key=missing_day)
        assert not result.success
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "no landing file for partition 2026-04-25" in str(failure.event_specific_data.error.cause.message)
        assert instance.get_materialized_partitions(AssetKey("raw_records")) == set()
    assert not (workspace.home / "assets" / "raw_records").exists()
    assert not (workspace.home / "assets" / "deidentified_records").exists()


def test_corrupt_landing_file_fails_with_one_line(tmp_path: Path, landing_zone: Path) -> None:
    broken = tmp_path / "landing"
    shutil.copytree(landing_zone / f"event_date={TEST_FIRST_DAY}", broken / f"event_date={TEST_FIRST_DAY}")
    (broken / f"event_date={TEST_FIRST_DAY}" / "records.csv").write_bytes(b"\x00\x01garbage")
    policy = write_policy(tmp_path)
    workspace = graph_workspace(tmp_path / "home", broken, policy)
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        result = workspace.run("collection_job", instance, partition_key=TEST_FIRST_DAY)
        assert not result.success
        message = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error.cause.message
        assert "records.csv: field '(file)': the file is binary or corrupt" in message
        assert instance.get_materialized_partitions(AssetKey("deidentified_records")) == set()


def test_changed_policy_is_refused_until_revalidated(workspace) -> None:  # type: ignore[no-untyped-def]
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        workspace.policy.write_text(workspace.policy.read_text().replace("k: 5", "k: 6"))
        result = workspace.run("collection_job", instance, partition_key=TEST_FIRST_DAY)
        assert not result.success
        message = next(e for e in result.all_events if e.is_step_failure).event_specific_data.error.cause.message
        assert "the policy changed since privacy_requirements was materialized" in message
        assert workspace.run("requirements_job", instance).success
        assert workspace.run("collection_job", instance, partition_key=TEST_FIRST_DAY).success


def _evidence(home: Path, as_of: str) -> dict:
    return json.loads((home / "reports" / as_of / "evidence.json").read_text())


def run_lifecycle(workspace, instance: DagsterInstance, window: list[str], **kwargs):  # type: ignore[no-untyped-def]
    assert workspace.run("requirements_job", instance).success
    assert workspace.collect(instance, window[0], window[-1]).success
    return workspace.run("training_job", instance, partition_key=window[-1], **kwargs)


def test_budget_warning_is_a_warning_not_a_gate() -> None:
    from dagster import AssetCheckSeverity

    from ppml_assets.training import budget_not_near_exhaustion

    spec = next(iter(budget_not_near_exhaustion.check_specs))
    assert not spec.blocking
    result = budget_not_near_exhaustion(privacy_budget={"near_exhaustion": True, "remaining_epsilon": 0.4})
    assert result.passed is False and result.severity == AssetCheckSeverity.WARN
