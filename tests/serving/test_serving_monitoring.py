"""Serving monitoring end to end: the real server on loopback writes the prediction log (a steady and a shifted
request stream, feedback labels through /feedback), the monitoring asset materializes from it, and the sensor,
evaluated with Dagster's real sensor context on a test instance, requests re-evaluation only for the shifted
stream and retraining only for a version older than the policy allows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from dagster import AssetKey, RunRequest, SensorResult, SkipReason, build_sensor_context, instance_for_test, materialize

from tests.serving.serving_support import Registered, raw_record, serve_in_process

pytestmark = pytest.mark.slow  # the shared registered version (~20-40 s once per session), then ~15 s here

KEY = "monitoring-key-" + "m" * 20
FEEDBACK_ROWS = 150


def monitored_policy(registered: Registered, folder: Path, **monitoring: Any) -> Path:
    """The registered version's policy (same name, so the same model) with room for the streams and small
    monitoring minimums for a test-sized log."""
    document = yaml.safe_load(registered.policy.read_text())
    document["serving"] |= {"requests_per_minute": 100_000, "queries_per_client": 10_000_000, "max_batch_rows": 100}
    document["monitoring"] = (document.get("monitoring") or {}) | {
        "min_serving_rows": 300,
        "min_feedback_rows": 100,
        "min_group_rows": 20,
        **monitoring,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def send_stream(base: str, records: list[dict], labels: list[str] | None = None) -> int:
    """Batches of 100 through /predict/batch; the first FEEDBACK_ROWS rows' true labels through /feedback."""
    session = requests.Session()  # keep-alive: one connection for the whole stream
    session.headers["X-API-Key"] = KEY
    sent = 0
    for start in range(0, len(records), 100):
        batch = session.post(f"{base}/predict/batch", json={"records": records[start : start + 100]})
        assert batch.status_code == 200, batch.text
        request_id = batch.json()["request_id"]
        for row in range(len(records[start : start + 100])):
            if labels is not None and sent + row < FEEDBACK_ROWS:
                body = {"request_id": request_id, "row": row, "label": labels[sent + row]}
                assert session.post(f"{base}/feedback", json=body).status_code == 200
        sent += len(records[start : start + 100])
    return sent


@pytest.fixture(scope="module")
def streams(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two workspaces' prediction logs written by the real server: the training population, and the same
    records aged to 90 and all female (a shifted population)."""
    from mlflow import MlflowClient

    from ppml.serving.registry import load_production

    folder = tmp_path_factory.mktemp("monitoring")
    policy = monitored_policy(registered, folder / "policy")
    label_column = yaml.safe_load(registered.policy.read_text())["schema"]["label"]["column"]
    rows = registered.kept_raw_rows
    records = [raw_record(registered, r) for r in rows]
    labels = [str(registered.deidentified.iloc[r][label_column]) for r in rows]
    homes = {name: folder / name for name in ("steady", "shifted")}
    client = MlflowClient(tracking_uri=registered.tracking_uri)
    served = load_production(client, registered.model_name)  # loaded once, served by both servers
    with serve_in_process(
        policy, registered, f"sqlite:///{homes['steady'] / 'serving' / 'predictions.db'}", KEY, served
    ) as base:
        steady = send_stream(base, records, labels)
    shifted_records = [{**record, "age": 90, "sex": "Female"} for record in records]
    with serve_in_process(
        policy, registered, f"sqlite:///{homes['shifted'] / 'serving' / 'predictions.db'}", KEY, served
    ) as base:
        shifted = send_stream(base, shifted_records)
    return {"policy": policy, "homes": homes, "sent": {"steady": steady, "shifted": shifted}, "folder": folder}


def resources(registered: Registered, policy: Path, home: Path) -> dict[str, Any]:
    from resources import MlflowResource, PolicyResource, WorkspacePaths

    return {
        "policy": PolicyResource(path=str(policy)),
        "mlflow": MlflowResource(tracking_uri=registered.tracking_uri),
        "paths": WorkspacePaths(home=str(home)),
    }


def test_monitoring_asset_materializes_from_the_servers_log(registered: Registered, streams: dict) -> None:
    from ppml.reporting import TEMPLATES
    from ppml_assets.serving_monitoring import latest_serving_monitoring, serving_monitoring

    reports = {}
    with instance_for_test() as instance:
        for name, home in streams["homes"].items():
            result = materialize(
                [serving_monitoring], instance=instance, resources=resources(registered, streams["policy"], home)
            )
            assert result.success
            metadata = result.asset_materializations_for_node("serving_monitoring")[0].metadata
            reports[name] = latest_serving_monitoring(instance, AssetKey("serving_monitoring"))
            assert metadata["served_rows"].value == streams["sent"][name]  # every request's rows reached the log
            assert metadata["model_version"].value == f"{registered.model_name} v{reports[name]['model_version']}"
            assert reports[name] == metadata["report"].value
    steady, shifted = reports["steady"], reports["shifted"]
    threshold = steady["input_drift"]["threshold"]
    assert steady["input_drift"]["max_psi"] < threshold and steady["actions"] == {}
    assert set(steady["input_drift"]["psi"]) == set(registered.spec["reference"]["counts"])  # the model's inputs
    assert steady["prediction_drift"]["status"] == "stable"
    feedback = steady["accuracy"]
    assert feedback["labels"] == FEEDBACK_ROWS and 0.0 <= feedback["accuracy"] <= 1.0
    assert all(g["n"] >= 20 for g in feedback["groups"]) and {g["attribute"] for g in feedback["groups"]} == {
        "sex",
        "race",
    }
    assert sum(g["n"] for g in feedback["groups"] if g["attribute"] == "sex") == FEEDBACK_ROWS
    assert feedback["groups_suppressed"] >= 1  # race has groups of fewer than 20 labelled rows: not shown
    assert "sex" in shifted["input_drift"]["drifted_features"]
    age_labels = set(registered.spec["generalization"]["age"]["mapping"].values())
    if age_labels == {"*"}:  # this small release suppresses age entirely: the model never sees the raw shift
        assert shifted["input_drift"]["psi"]["age"] == 0.0
    assert shifted["accuracy"]["status"] == "not enough feedback (0 labels < 100)"
    assert "reevaluate" in shifted["actions"] and shifted["trained_as_of"] == registered.as_of

    from jinja2 import Environment, FileSystemLoader

    html = (
        Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
        .get_template("serving_monitoring.html.j2")
        .render(e={"serving_monitoring": shifted})
    )
    assert "Monitoring of the served model" in html and "drifted: " in html and "reevaluate" in html
    dump = json.dumps(reports)
    assert all(str(v) not in dump for v in registered.raw["ssn"].head(50))


def test_sensor_fires_on_the_shifted_stream_only(registered: Registered, streams: dict) -> None:
    from sensors import serving_monitoring_sensor

    homes, policy = streams["homes"], streams["policy"]
    with instance_for_test() as instance:
        steady = build_sensor_context(instance=instance, resources=resources(registered, policy, homes["steady"]))
        quiet = serving_monitoring_sensor(steady)
        assert isinstance(quiet, SkipReason) and "no threshold passed" in quiet.skip_message

        shifted = build_sensor_context(instance=instance, resources=resources(registered, policy, homes["shifted"]))
        fired = serving_monitoring_sensor(shifted)
        assert isinstance(fired, SensorResult)
        by_job = {request.job_name: request for request in fired.run_requests or []}
        assert set(by_job) == {"reevaluation_job", "serving_monitoring_job"}
        reevaluation = by_job["reevaluation_job"]
        assert isinstance(reevaluation, RunRequest) and reevaluation.partition_key == registered.as_of
        assert reevaluation.tags["ppml/trigger"] == "serving_drift"
        assert "sex" in reevaluation.tags["ppml/drifted_features"].split(",")

        again = build_sensor_context(
            instance=instance, resources=resources(registered, policy, homes["shifted"]), cursor=fired.cursor
        )
        assert "no new predictions" in serving_monitoring_sensor(again).skip_message

        other = streams["folder"] / "other" / "policy.yaml"
        other.parent.mkdir()
        other.write_text(streams["policy"].read_text().replace(f"name: {registered.model_name[5:]}", "name: unserved"))
        unserved = build_sensor_context(instance=instance, resources=resources(registered, other, homes["steady"]))
        assert "no version is in production" in serving_monitoring_sensor(unserved).skip_message

        aged = monitored_policy(registered, streams["folder"] / "aged", max_model_age_days=1e-9)
        old = build_sensor_context(instance=instance, resources=resources(registered, aged, homes["steady"]))
        retrain = {r.job_name: r for r in serving_monitoring_sensor(old).run_requests or []}
        assert "reevaluation_job" not in retrain
        assert retrain["training_job"].tags["ppml/trigger"] == "serving_monitoring"  # dp_model charges the ledger
        assert "served for" in retrain["training_job"].tags["ppml/reasons"]
