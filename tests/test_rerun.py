"""A crash after training never charges twice: rerunning a completed training reuses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, instance_for_test, materialize

from ppml.ledger import PrivacyLedger
from tests.graph_support import graph_workspace, write_policy
from tests.support import TEST_FIRST_DAY, days

TRAINING_STEPS = [AssetKey(name) for name in ("anonymized_records", "cleaned_records", "training_features", "dp_model")]


def _train(workspace, instance, as_of: str):  # type: ignore[no-untyped-def]
    """Materialize the steps up to dp_model as of one day (what the training job does before the report)."""
    from ppml_assets.definitions import defs

    return materialize(
        [*defs.assets, *defs.asset_checks],
        selection=TRAINING_STEPS,
        resources=workspace.resources,
        instance=instance,
        partition_key=as_of,
        raise_on_error=False,
    )


@pytest.mark.slow
def test_rerun_after_a_later_crash_reuses_the_training_and_charges_nothing(tmp_path: Path, landing_zone: Path) -> None:
    three = days(TEST_FIRST_DAY, 3)
    as_of = three[-1]
    policy = write_policy(
        tmp_path,
        evaluation__audit_canaries=0,
        evaluation__reference_models=0,
        training__epochs=1,
        training__train_non_private_baseline=False,
    )
    workspace = graph_workspace(tmp_path / "home", landing_zone, policy)
    ledger_url = workspace.resources["ledger"].url
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        assert workspace.collect(instance, three[0], three[-1]).success
        first = _train(workspace, instance, as_of)
        assert first.success
        trained = first.asset_materializations_for_node("dp_model")[0].metadata
        assert trained["reused"].value is False
        store = PrivacyLedger(ledger_url)
        try:
            runs_after_training = len(store.runs())
        finally:
            store.close()
        assert runs_after_training >= 1

        # The report (or any later step) crashed; the operator reruns the training job.
        again = _train(workspace, instance, as_of)
        assert again.success
        reused = again.asset_materializations_for_node("dp_model")[0].metadata
        assert reused["reused"].value is True
        assert reused["mlflow_run_id"].value == trained["mlflow_run_id"].value
        assert reused["model_version"].value == trained["model_version"].value
        store = PrivacyLedger(ledger_url)
        try:
            assert len(store.runs()) == runs_after_training  # no new charge
        finally:
            store.close()

        # A different configuration is a different training: it trains and is charged.
        changed = write_policy(
            tmp_path,
            evaluation__audit_canaries=0,
            evaluation__reference_models=0,
            training__epochs=2,
            training__train_non_private_baseline=False,
        )
        assert changed == policy
        assert workspace.run("requirements_job", instance).success
        retrained = _train(workspace, instance, as_of)
        assert retrained.success
        assert retrained.asset_materializations_for_node("dp_model")[0].metadata["reused"].value is False
        store = PrivacyLedger(ledger_url)
        try:
            assert len(store.runs()) > runs_after_training
        finally:
            store.close()
