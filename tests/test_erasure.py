"""Erasure that propagates: a request reaches the partitions, runs and registered versions trained on the subject.

The graph test trains a real (small) model, promotes it, files an erasure request for one of its subjects and
trains again: the earlier version is tagged and retired in the MLflow registry, the production alias moves away,
the new run leaves the subject out although its partitions still hold the record, and `ppml erasure-status`
shows all of it. The engine tests cover `keep` with its group-privacy bound and the alias moving to the newest
clean version, on a real MLflow registry.
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, instance_for_test, materialize
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from typer.testing import CliRunner

from ppml.cli import app
from ppml.deidentification import hmac_key_from_env
from ppml.deployment import PRODUCTION_ALIAS, decide_promotion
from ppml.erasure import (
    bind_run,
    erasure_status,
    exclude_erased,
    index_root,
    propagate,
    record_day_tokens,
    runs_including,
    subject_tokens,
)
from ppml.errors import PPMLError
from ppml.policy import load_policy
from tests.graph_support import graph_workspace, write_policy
from tests.support import REPO_ROOT, SESSION_HOME, TEST_FIRST_DAY, days

TRAINING_STEPS = [AssetKey(name) for name in ("anonymized_records", "cleaned_records", "training_features", "dp_model")]
SMALL_TRAINING = {
    "evaluation__audit_canaries": 0,
    "evaluation__reference_models": 0,
    "training__epochs": 1,
    "training__candidates": "listed",  # one candidate: the subject here is the lineage, not model selection
    "training__train_non_private_baseline": False,
}


def _train(workspace, instance, as_of: str):  # type: ignore[no-untyped-def]
    from ppml_assets.definitions import defs

    result = materialize(
        [*defs.assets, *defs.asset_checks],
        selection=TRAINING_STEPS,
        resources=workspace.resources,
        instance=instance,
        partition_key=as_of,
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return result


def _status(monkeypatch: pytest.MonkeyPatch, home: Path, policy: Path, subject: str):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PPML_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    return CliRunner().invoke(app, ["erasure-status", subject, "--policy", str(policy)])


@pytest.mark.slow
def test_erasure_reaches_the_registered_version_and_the_next_run_leaves_the_subject_out(
    tmp_path: Path, landing_zone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = days(TEST_FIRST_DAY, 3)
    requests = tmp_path / "erasure_requests.csv"
    shutil.copy(REPO_ROOT / "data" / "erasure_requests.csv", requests)
    policy = write_policy(tmp_path, collection__erasure_list=str(requests), **SMALL_TRAINING)
    workspace = graph_workspace(tmp_path / "home", landing_zone, policy)
    subject = pd.read_csv(landing_zone / f"event_date={window[1]}" / "records.csv", dtype=str)["record_id"].iloc[0]
    client = MlflowClient(tracking_uri=workspace.resources["mlflow"].tracking_uri)
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        assert workspace.collect(instance, window[0], window[-1]).success
        first_run = _train(workspace, instance, window[-1])
        first = first_run.asset_materializations_for_node("dp_model")[0].metadata
        name, v1 = "ppml-adult-income-gdpr", str(first["model_version"].value)
        assert decide_promotion(client, name, v1, first["mlflow_run_id"].value, []).promoted  # as the gate would

        before = _status(monkeypatch, workspace.home, policy, subject)
        assert before.exit_code == 0, before.output
        assert "not on the erasure list" in before.output
        assert f"still holding records: {window[1]}" in before.output
        assert f"{name} v{v1} as of {window[-1]}: 1 record(s) in 1 partition(s) {window[1]}" in before.output
        assert "erasure: not requested" in before.output and "[production]" in before.output

        # The subject asks for erasure after their day was collected; the policy (its list) is re-validated.
        with requests.open("a") as handle:
            handle.write(f"{subject},2026-03-04,GDPR Art. 17 erasure\n")
        assert workspace.run("requirements_job", instance).success
        pending = _status(monkeypatch, workspace.home, policy, subject)
        assert "received_on 2026-03-04" in pending.output and "pending: the next training run" in pending.output

        second = _train(workspace, instance, window[-1])
        anonymized = second.asset_materializations_for_node("anonymized_records")[0].metadata
        assert anonymized["rows_excluded_by_erasure_request"].value == 1  # still in the partition, left out here
        assert anonymized["subjects_excluded"].value == 1
        trained = second.asset_materializations_for_node("dp_model")[0].metadata
        v2 = str(trained["model_version"].value)
        assert v2 != v1

    outcome = workspace.resources["asset_store"].read_stored("dp_model", window[-1])["erasure"]
    assert outcome["action"] == "retire"
    assert [(a["version"], a["was_production"]) for a in outcome["affected_versions"]] == [(v1, True)]
    assert outcome["production_alias"] == {name: {"before": v1, "after": None}}
    tags = client.get_model_version(name, v1).tags
    assert tags["ppml.erasure"] == "affected" and tags["ppml.retired"] == "erasure"
    assert tags["ppml.erasure_subjects"] == "1" and tags["ppml.erasure_action"] == "retired"
    assert client.get_run(first["mlflow_run_id"].value).data.tags["ppml.erasure"] == "affected"
    assert "ppml.erasure" not in client.get_model_version(name, v2).tags  # trained without the subject
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, PRODUCTION_ALIAS)

    after = _status(monkeypatch, workspace.home, policy, subject)
    assert after.exit_code == 0, after.output
    assert "runs and model versions that included the subject: 1" in after.output
    assert f"{name} v{v1} " in after.output and f"{name} v{v2} " not in after.output
    assert "registry: retired" in after.output and "erasure: retired" in after.output
    assert f"Dagster run {first_run.run_id}, MLflow run {first['mlflow_run_id'].value}" in after.output

    unknown = _status(monkeypatch, workspace.home, policy, "S-nobody-here")
    assert unknown.exit_code == 0 and unknown.output.strip() == "unknown subject"
    # nothing personal beside the asset files: the index holds tokens only, owner-only
    root = index_root(workspace.home / "assets", load_policy(policy).policy)
    assert all((path.stat().st_mode & 0o077) == 0 for path in root.rglob("*") if path.is_file())
    assert not any(subject.encode() in path.read_bytes() for path in root.rglob("*") if path.is_file())


def _registry() -> tuple[MlflowClient, str, str]:
    """The session's MLflow store (created once per session), with a registered model of this test's own."""
    (SESSION_HOME / "mlflow").mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    name = f"erasure-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name, artifact_location=(SESSION_HOME / "mlflow" / name).as_uri())
    client.create_registered_model(name)
    return client, experiment, name


def _version(client: MlflowClient, experiment: str, name: str, promoted: bool) -> tuple[str, str]:
    run = client.create_run(experiment)
    version = str(client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id).version)
    if promoted:
        decide_promotion(client, name, version, run.info.run_id, [])
    return version, run.info.run_id


def _window(subjects: list[str], day_of: list[str]) -> pd.DataFrame:
    """Records as raw and de-identified frames share them here (same rows, same order; split buckets 0..n-1)."""
    return pd.DataFrame({"record_id": subjects, "event_date": day_of, "split_bucket": range(len(subjects))})


def _bind(
    root: Path, loaded, key: bytes, frame: pd.DataFrame, as_of: str, version: str, run_id: str, name: str
) -> None:  # type: ignore[no-untyped-def]
    day_list = sorted(set(frame["event_date"]))
    record_day_tokens(root, frame, frame, day_list, loaded.policy, key)
    exclusion = exclude_erased(frame, day_list, loaded, key, root, "test")
    exclusion.save(root, as_of)
    lineage = {"model_name": name, "version": version, "mlflow_run_id": run_id, "dagster_run_id": "d-" + version}
    bind_run(root, as_of, lineage | {"epsilon": 0.5, "delta": 1e-6})


def test_keep_states_the_group_privacy_bound_and_retire_moves_the_alias_to_a_clean_version(tmp_path: Path) -> None:
    requests = tmp_path / "requests.csv"
    requests.write_text("subject_id\n")
    policy = write_policy(tmp_path, collection__erasure_list=str(requests), collection__erasure_action="keep")
    loaded = load_policy(policy)
    key = hmac_key_from_env()
    root = index_root(tmp_path / "assets", loaded.policy)
    client, experiment, m = _registry()
    v1, run1 = _version(client, experiment, m, promoted=True)
    _bind(root, loaded, key, _window(["S1", "S2"], ["2026-03-01", "2026-03-01"]), "2026-03-01", v1, run1, m)
    v2, run2 = _version(client, experiment, m, promoted=True)  # S3 has three records over two days in v2 only
    subjects = ["S1", "S3", "S3", "S2", "S3"]
    _bind(root, loaded, key, _window(subjects, ["2026-03-01"] * 3 + ["2026-03-02"] * 2), "2026-03-02", v2, run2, m)
    assert str(client.get_model_version_by_alias(m, PRODUCTION_ALIAS).version) == v2

    erased = np.unique(subject_tokens(["S3"], key, loaded.policy))
    kept = propagate(root, erased, "keep", client)
    (affected,) = kept["affected_versions"]
    assert (affected["version"], affected["max_records_per_subject"], affected["partitions_holding_them"]) == (v2, 3, 2)
    assert affected["person_epsilon_bound"] == pytest.approx(1.5)  # group privacy: 3 records x epsilon 0.5
    assert affected["person_delta_bound"] == pytest.approx(3 * math.exp(2 * 0.5) * 1e-6)
    assert str(client.get_model_version_by_alias(m, PRODUCTION_ALIAS).version) == v2  # keep: still served
    assert client.get_model_version(m, v2).tags["ppml.erasure_epsilon_bound"] == "1.5"
    assert "ppml.erasure" not in client.get_model_version(m, v1).tags

    retired = propagate(root, erased, "retire", client)
    assert retired["production_alias"] == {m: {"before": v2, "after": v1}}  # the newest clean promoted version
    assert client.get_model_version(m, v2).tags["ppml.retired"] == "erasure"

    # the status of S3 names the version and its days; an id nothing ever held is "unknown", not an error
    status = erasure_status("S3", loaded, key, root, client)
    assert status.known and status.requested is None
    assert [(r["version"], r["records"], r["partitions"]) for r in status.runs] == [
        (v2, 3, ["2026-03-01", "2026-03-02"])
    ]
    assert not erasure_status("S9", loaded, key, root, client).known
    with pytest.raises(PPMLError, match=r"field 'PPML_HMAC_KEY': not the key .*fix:"):
        erasure_status("S3", loaded, b"another key of at least thirty-two bytes", root, client)
    assert [m.manifest["version"] for m in runs_including(root, subject_tokens(["S1"], key, loaded.policy))] == [v1, v2]
    (match,) = runs_including(root, erased)
    match.manifest["privacy_unit"] = "subject"  # a per-person guarantee needs no group-privacy conversion
    assert match.person_bound() == (0.5, 1e-6)


def test_an_erased_subject_is_left_out_of_a_window_and_a_missing_index_is_refused(tmp_path: Path) -> None:
    requests = tmp_path / "requests.csv"
    requests.write_text("subject_id,received_on\nS2,2026-03-02\n")
    loaded = load_policy(write_policy(tmp_path, collection__erasure_list=str(requests)))
    key = hmac_key_from_env()
    root = index_root(tmp_path / "assets", loaded.policy)
    frame = _window(["S1", "S2", "S3", "S2"], ["2026-03-01", "2026-03-01", "2026-03-02", "2026-03-02"])
    two_days = ["2026-03-01", "2026-03-02"]
    record_day_tokens(root, frame, frame, two_days, loaded.policy, key)
    # the de-identified window need not carry the day (HIPAA generalizes it to the year): the read order is given
    window = frame.assign(event_date="2026")
    exclusion = exclude_erased(window, two_days, loaded, key, root, "anonymized_records[2026-03-02]")
    assert list(exclusion.records["record_id"]) == ["S1", "S3"]
    assert exclusion.metadata() == {"rows_excluded_by_erasure_request": 2, "subjects_excluded": 1}
    with pytest.raises(PPMLError, match=r"do not match their erasure index.*fix: re-run collection_job"):
        exclude_erased(window, two_days[::-1], loaded, key, root, "anonymized_records[2026-03-02]")  # wrong order
    (root / "days" / "2026-03-02.npz").unlink()
    with pytest.raises(PPMLError, match=r"deidentified_records\[2026-03-02\].*fix: re-run collection_job"):
        exclude_erased(window, two_days, loaded, key, root, "anonymized_records[2026-03-02]")
    # tokens depend on the key and the purpose: another purpose cannot link them
    (tmp_path / "other").mkdir()
    other = write_policy(tmp_path / "other")
    other.write_text(other.read_text().replace("Estimate whether", "Decide whether"))
    assert subject_tokens(["S1"], key, load_policy(other).policy)[0] != subject_tokens(["S1"], key, loaded.policy)[0]


def test_a_bad_erasure_action_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = write_policy(tmp_path, collection__erasure_action="delete")
    result = _status(monkeypatch, tmp_path / "home", policy, "S1")
    assert result.exit_code == 2
    line = " ".join(result.output.split())
    assert "field 'collection.erasure_action'" in line and "fix:" in line and "Traceback" not in result.output
