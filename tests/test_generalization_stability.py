"""A retrain keeps the previous as-of day's generalization while it is valid (ppml.anonymization.stability),
read from the asset's own earlier materialization; ``keep_previous_generalization_within: 0`` keeps it only on a
tie. The release is verified independently either way."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, instance_for_test, materialize

from tests.graph_support import graph_workspace, write_policy
from tests.support import TEST_FIRST_DAY, days


def _anonymize(workspace, instance, as_of: str):  # type: ignore[no-untyped-def]
    from ppml_assets.definitions import defs

    result = materialize(
        [*defs.assets, *defs.asset_checks],
        selection=[AssetKey("anonymized_records")],
        resources=workspace.resources,
        instance=instance,
        partition_key=as_of,
        raise_on_error=False,
    )
    assert result.success
    return result.asset_materializations_for_node("anonymized_records")[0].metadata


@pytest.mark.slow
def test_the_next_as_of_day_keeps_the_previous_generalization_while_valid(tmp_path: Path, landing_zone: Path) -> None:
    five = days(TEST_FIRST_DAY, 5)  # the test graph's window is 4 days: two windows sharing three
    for tolerance in (1.0, 0.0):
        home = tmp_path / f"home-{tolerance}"
        home.mkdir()
        policy = write_policy(home, privacy__keep_previous_generalization_within=tolerance)
        workspace = graph_workspace(home, landing_zone, policy)
        with instance_for_test() as instance:
            assert workspace.run("requirements_job", instance).success
            assert workspace.collect(instance, five[0], five[-1]).success
            first = _anonymize(workspace, instance, five[3])
            assert first["anonymization_report"].value["stability"] is None  # nothing earlier to keep
            second = _anonymize(workspace, instance, five[4])
        stability = second["anonymization_report"].value["stability"]
        assert stability["previous"] == first["transformation"].value
        kept = second["kept_previous_transformation"].value
        assert kept == stability["kept"]
        if tolerance == 1.0:  # overlapping windows: last release is still valid, and any loss is within 100 %
            assert kept and second["transformation"].value == first["transformation"].value
        else:  # only a tie keeps it; otherwise this window's optimum is released
            assert kept == (stability["optimum"] == first["transformation"].value)
            assert second["transformation"].value == stability["optimum"]
