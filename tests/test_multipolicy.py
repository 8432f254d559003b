"""Several policies in one code location (PPML_POLICY_DIR): each its own prefixed graph, resources, jobs,
schedules, sensor, asset files, reports and ledger account; colliding policies refused in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetKey, instance_for_test

from ppml.errors import PPMLError
from ppml.ledger import PrivacyLedger
from tests.graph_support import write_policy
from tests.support import GDPR_POLICY, HIPAA_POLICY, REPO_ROOT, TEST_FIRST_DAY, days, mlflow_sqlite_uri

GDPR, HIPAA = "adult_income_gdpr", "adult_income_hipaa"
HIPAA_DATASET = "adult-census-1994-hipaa-study"
CHEAP = {
    "evaluation__audit_canaries": 0,
    "evaluation__reference_models": 0,
    "training__epochs": 1,
    "training__candidates": "listed",
    "training__model": "logistic",
    "training__accountant": "rdp",
    "training__train_non_private_baseline": False,
}


def _place(folder: Path, scratch: Path, name: str, base: Path, **changes: Any) -> Path:
    """A shipped policy (absolute paths, ``section__field`` changes) written as ``folder/<name>.yaml``."""
    scratch.mkdir(parents=True)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.yaml"
    shutil.move(write_policy(scratch, base=base, **changes), target)
    return target


def _set(path: Path, dotted: str, value: Any) -> None:
    document = yaml.safe_load(path.read_text())
    *parents, last = dotted.split(".")
    target = document
    for part in parents:
        target = target[part]
    target[last] = value
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def two_policies(tmp_path: Path, **hipaa_changes: Any) -> Path:
    """adult_gdpr and adult_hipaa (on another dataset.id) in one folder."""
    folder = tmp_path / "policies"
    _place(folder, tmp_path / "a", "adult_gdpr", GDPR_POLICY, **CHEAP)
    hipaa = _place(folder, tmp_path / "b", "adult_hipaa", HIPAA_POLICY, **CHEAP, **hipaa_changes)
    _set(hipaa, "dataset.id", HIPAA_DATASET)
    return folder


def _one_line(error: PPMLError, *fragments: str) -> str:
    message = str(error)
    assert "\n" not in message and "fix:" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_same_prefix_or_same_dataset_is_refused_naming_both_files(tmp_path: Path) -> None:
    from ppml_assets.graph import discover_policy_graphs

    folder = two_policies(tmp_path)
    same_data = folder / "adult_hipaa.yaml"
    _set(same_data, "dataset.id", "adult-census-1994")
    with pytest.raises(PPMLError) as error:
        discover_policy_graphs(folder)
    _one_line(error.value, str(folder / "adult_gdpr.yaml"), str(same_data), "field 'dataset.id'")

    _set(same_data, "dataset.id", HIPAA_DATASET)
    _set(same_data, "name", "adult_income_gdpr")  # adult-income-gdpr and adult_income_gdpr: one prefix
    with pytest.raises(PPMLError) as error:
        discover_policy_graphs(folder)
    _one_line(error.value, str(folder / "adult_gdpr.yaml"), str(same_data), "field 'name'", GDPR)


@pytest.mark.parametrize("case", ["not a folder", "empty folder", "name starts with a digit", "bad policy file"])
def test_bad_policy_folder_is_refused_in_one_line(tmp_path: Path, case: str) -> None:
    from ppml_assets.graph import discover_policy_graphs

    folder = two_policies(tmp_path)
    expected = {"not a folder": "(folder)", "empty folder": "(files)"}.get(case, "name")
    named = str(folder)
    if case == "not a folder":
        folder = folder / "adult_gdpr.yaml"
        named = str(folder)
    elif case == "empty folder":
        for path in folder.iterdir():
            path.unlink()
    elif case == "name starts with a digit":
        _set(folder / "adult_hipaa.yaml", "name", "2026-income-hipaa")
        named = str(folder / "adult_hipaa.yaml")
    else:
        (folder / "adult_hipaa.yaml").write_text("name: [unclosed\n")
        expected, named = "", str(folder / "adult_hipaa.yaml")
    with pytest.raises(PPMLError) as error:
        discover_policy_graphs(folder)
    _one_line(error.value, named, f"field '{expected}" if expected else "field '")


def test_policy_and_policy_folder_together_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppml_assets.graph import DEFAULT_GRAPH, policy_graphs_from_env

    monkeypatch.delenv("PPML_POLICY", raising=False)  # another test's in-process CLI may have set it
    assert policy_graphs_from_env() == [DEFAULT_GRAPH]  # the default: one unprefixed graph, as always
    monkeypatch.setenv("PPML_POLICY_DIR", str(two_policies(tmp_path)))
    assert [graph.prefix for graph in policy_graphs_from_env()] == [GDPR, HIPAA]
    monkeypatch.setenv("PPML_POLICY", str(GDPR_POLICY))
    with pytest.raises(PPMLError) as error:
        policy_graphs_from_env()
    _one_line(error.value, "environment", "field 'PPML_POLICY_DIR'", "unset one")


@pytest.mark.parametrize("command", [["demo"], ["run", "--policy", str(GDPR_POLICY), "--landing-zone", "."]])
def test_run_and_demo_refuse_a_policy_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list) -> None:
    from typer.testing import CliRunner

    from ppml.cli import app

    for name in ("PPML_POLICY", "PPML_SOURCE", "PPML_LANDING_ZONE", "PPML_SOURCE_URL", "PPML_SOURCE_TABLE"):
        monkeypatch.setenv(name, "")  # records the value before the test: the CLI sets these, teardown restores
        monkeypatch.delenv(name)
    monkeypatch.setenv("PPML_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PPML_POLICY_DIR", str(two_policies(tmp_path)))
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "field 'PPML_POLICY_DIR'" in lines[0] and "fix:" in lines[0], result.output
    assert not (tmp_path / "home").exists()  # refused before anything is written


def _definitions(folder: Path, home: Path, landing: Path) -> tuple[list, Any]:
    from ppml_assets.definitions import build_definitions, graph_resources, shared_resources
    from ppml_assets.graph import discover_policy_graphs
    from resources import LandingZoneSource

    graphs = discover_policy_graphs(folder)
    (home / "mlflow").mkdir(parents=True)
    resources = shared_resources(
        home,
        LandingZoneSource(root=str(landing)),
        os.environ["PPML_HMAC_KEY"],
        mlflow_sqlite_uri(home),
        (home / "mlflow" / "artifacts").as_uri(),
        f"sqlite:///{home / 'ledger.db'}",
    )
    for graph in graphs:
        resources |= graph_resources(graph, home)
    return graphs, build_definitions(graphs, resources)


def _run(defs: Any, job: str, instance: Any, **kwargs: Any) -> Any:
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
        **kwargs,
    )


def _window_partitions(instance: Any, prefix: str, as_of: str) -> int:
    from ppml_assets.common import latest_metadata

    return latest_metadata(instance, AssetKey([prefix, "anonymized_records"]), as_of)["window_partitions"]


@pytest.mark.slow
def test_two_policies_materialize_side_by_side(tmp_path: Path, landing_zone: Path) -> None:
    """Both graphs in one Definitions and one instance: each collects, anonymizes over its own window and charges
    its own ledger account; the HIPAA graph runs its whole training job to the gate and its own report folder."""
    three = days(TEST_FIRST_DAY, 3)
    as_of = three[-1]
    home = tmp_path / "home"
    # the HIPAA policy's window is 2 days: the partition mapping is the graph's own, not the default's
    folder = two_policies(tmp_path, collection__training_window_days=2)
    graphs, defs = _definitions(folder, home, landing_zone)
    assert [graph.prefix for graph in graphs] == [GDPR, HIPAA]
    with instance_for_test() as instance:
        for prefix in (GDPR, HIPAA):
            assert _run(defs, f"{prefix}__requirements_job", instance).success
            collected = _run(
                defs,
                f"{prefix}__collection_job",
                instance,
                tags={"dagster/asset_partition_range_start": three[0], "dagster/asset_partition_range_end": as_of},
            )
            assert collected.success
            assert {e.asset_key for e in collected.get_asset_check_evaluations()} == {
                AssetKey([prefix, "raw_records"]),
                AssetKey([prefix, "deidentified_records"]),
            }
        gdpr_selection = [AssetKey([GDPR, "anonymized_records"]), AssetKey([GDPR, "dp_statistics"])]
        gdpr = _run(
            defs,
            f"{GDPR}__training_job",
            instance,
            partition_key=as_of,
            asset_selection=gdpr_selection,
        )
        assert gdpr.success
        hipaa = _run(defs, f"{HIPAA}__training_job", instance, partition_key=as_of)
        # 3 days train a constant DP model, which the gate rightly refuses; the graph ran to its verdicts
        assert instance.get_materialized_partitions(AssetKey([HIPAA, "compliance_status"])) == {as_of}
        assert instance.get_materialized_partitions(AssetKey([HIPAA, "privacy_budget"])) == {as_of}
        checks = {e.check_name for e in hipaa.get_asset_check_evaluations()}
        assert {"anonymized_records_expectations", "privacy_models_hold", "k_anonymity"} <= checks
        assert _window_partitions(instance, GDPR, as_of) == 3
        assert _window_partitions(instance, HIPAA, as_of) == 2
        assert instance.get_materialized_partitions(AssetKey("raw_records")) == set()

        # a window edited after the code location loaded is refused, not read with the loaded mapping
        _set(folder / "adult_gdpr.yaml", "collection.training_window_days", 2)
        assert _run(defs, f"{GDPR}__requirements_job", instance).success
        stale = _run(defs, f"{GDPR}__training_job", instance, partition_key=as_of, asset_selection=gdpr_selection)
        failure = next(e for e in stale.all_events if e.is_step_failure).event_specific_data.error.cause.message
        assert "field 'collection.training_window_days': changed since the code location loaded" in failure

    for prefix in (GDPR, HIPAA):
        stored = sorted(p.name for p in (home / "assets" / prefix / "deidentified_records").iterdir())
        assert stored == [f"{day}.parquet" for day in three]
    assert not (home / "assets" / "raw_records").exists()
    assert (home / "reports" / HIPAA / as_of / "evidence.json").is_file()
    assert not (home / "reports" / as_of).exists()
    store = PrivacyLedger(f"sqlite:///{home / 'ledger.db'}")
    try:
        gdpr_runs, hipaa_runs = store.runs("adult-census-1994"), store.runs(HIPAA_DATASET)
    finally:
        store.close()
    assert len(gdpr_runs) == 1  # the OpenDP summary only
    assert len(hipaa_runs) > 1  # the summary and the DP training
    assert not {run.id for run in gdpr_runs} & {run.id for run in hipaa_runs}


QUERY = """{
  assetNodes { assetKey { path } groupName dependencyKeys { path } }
  workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError {
    __typename ... on RepositoryLocation { repositories { jobs { name } schedules { name } sensors { name } } } } } } }
}"""


def test_the_code_location_lists_both_graphs_over_graphql(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The code location file workspace.yaml names, loaded with PPML_POLICY_DIR and asked through the GraphQL
    schema the Dagster UI reads (in process: the webserver's own load is tests/test_cli.py's slow test)."""
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster_graphql.test.utils import execute_dagster_graphql

    location = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())["load_from"][0]["python_module"]
    monkeypatch.delenv("PPML_POLICY", raising=False)  # another test's in-process CLI may have set it
    monkeypatch.setenv("PPML_POLICY_DIR", str(two_policies(tmp_path)))
    origin = LoadableTargetOrigin(
        python_file=str(REPO_ROOT / (location["module_name"].replace(".", "/") + ".py")),
        attribute="defs",
        working_directory=str(REPO_ROOT),
    )
    with instance_for_test() as instance, in_process_test_workspace(instance, origin) as context:
        data = execute_dagster_graphql(context, QUERY).data
    (entry,) = data["workspaceOrError"]["locationEntries"]
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"
    nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
    for prefix in (GDPR, HIPAA):
        assert nodes[f"{prefix}/anonymized_records"]["groupName"] == f"{prefix}__03_anonymization"
        deps = {"/".join(d["path"]) for d in nodes[f"{prefix}/anonymized_records"]["dependencyKeys"]}
        assert deps == {f"{prefix}/deidentified_records"}
    # every asset of the lifecycle, once per policy, and nothing else
    per_graph = {key.split("/", 1)[1] for key in nodes if key.startswith(f"{GDPR}/")}
    assert {"serving_monitoring", "compliance_report", "raw_records"} <= per_graph
    assert len(nodes) == 2 * len(per_graph) == 2 * 18
    (repository,) = entry["locationOrLoadError"]["repositories"]
    names = {item["name"] for kind in ("jobs", "schedules", "sensors") for item in repository[kind]}
    for prefix in (GDPR, HIPAA):
        assert {f"{prefix}__training_job", f"{prefix}__weekly_retraining_schedule", f"{prefix}__drift_sensor"} <= names
