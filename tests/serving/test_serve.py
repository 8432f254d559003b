"""ppml serve against a real uvicorn server on loopback, serving a version registered by a small real training."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests.serving.serving_support import BUDGET, RATE, Registered, promote_again, raw_record, server_env

pytestmark = pytest.mark.slow  # a training, a registration and a server start: ~20-40 s on 2 shared cores

KEYS = [f"key-{name}-{uuid.uuid4().hex}" for name in ("main", "rate", "budget", "switch")]
CLI = "import sys; from ppml.cli import app; sys.argv[0] = 'ppml'; app()"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited early: {process.stdout.read() if process.stdout else ''}")
        try:
            if requests.get(f"{base}/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError("server did not become ready")


def wait_for_version(base: str, version: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{base}/ready", timeout=2).json()["model_version"] == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"server did not switch to v{version}")


@pytest.fixture(scope="module")
def server(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("serve-home")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", CLI, "serve", "--policy", str(registered.policy), "--port", str(port)],
        env=server_env(home, registered, KEYS),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield {"base": base, "home": home, "process": process}
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn shuts down gracefully), SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def expected_probabilities(registered: Registered, released_rows: list[int]) -> list[float]:
    """The registered model itself on the training pipeline's own features of those records."""
    from ppml.deployment import ServedModel

    model = ServedModel(f"models:/{registered.model_name}/1", registered.tracking_uri)
    X = registered.features.iloc[released_rows][registered.spec["feature_names"]].to_numpy(dtype="float32")
    return [float(p) for p in model.predict_proba(X)]


def post(server: dict, path: str, body: Any, key: str | None = KEYS[0]) -> requests.Response:
    headers = {"X-API-Key": key} if key else {}
    return requests.post(f"{server['base']}{path}", json=body, headers=headers, timeout=30)


def test_spec_replays_the_training_pipeline_on_raw_records(registered: Registered) -> None:
    """Every released record's raw values, put through the recorded spec, give exactly the features training used
    (generalized QIs, release-safety bins and handles), so the service scores what the model was trained on."""
    from ppml.serving.spec import FeatureBuilder

    builder = FeatureBuilder(registered.spec)
    rows = registered.kept_raw_rows
    generalized = {c for c, e in registered.spec["generalization"].items() if e["level"] > 0}
    assert generalized, "the fixture's release generalizes something"
    for position, raw_row in enumerate(rows):
        record = registered.deidentified.iloc[raw_row].to_dict()
        assert builder.released_values(record) == registered.released_inputs.iloc[position].to_dict()


def test_schema_auth_predictions_and_generalization(registered: Registered, server: dict) -> None:
    schema = requests.get(f"{server['base']}/openapi.json", timeout=10).json()
    record = schema["components"]["schemas"]["PredictionRecord"]["properties"]
    assert record["age"]["anyOf"][0]["type"] == "integer" and record["age"]["anyOf"][0]["maximum"] == 100
    assert "workclass" in record and "fnlwgt" not in record and "ssn" not in record  # fnlwgt: dropped by release
    assert requests.get(f"{server['base']}/docs", timeout=10).status_code == 200
    assert requests.get(f"{server['base']}/health", timeout=10).json() == {"status": "ok"}

    assert post(server, "/predict", raw_record(registered, 0), key=None).status_code == 401
    assert post(server, "/predict", raw_record(registered, 0), key="wrong-key-" + "x" * 20).status_code == 401

    released = list(range(12))
    raw_rows = [registered.kept_raw_rows[i] for i in released]
    expected = expected_probabilities(registered, released)
    single = post(server, "/predict", raw_record(registered, raw_rows[0]))
    assert single.status_code == 200, single.text
    body = single.json()
    assert body["model_version"] == "1" and len(body["request_id"]) == 32
    assert body["prediction"]["probability"] == pytest.approx(expected[0], abs=1e-4)
    batch = post(server, "/predict/batch", {"records": [raw_record(registered, r) for r in raw_rows]})
    assert batch.status_code == 200, batch.text
    got = [p["probability"] for p in batch.json()["predictions"]]
    assert got == pytest.approx(expected, abs=1e-4)
    assert {p["label"] for p in batch.json()["predictions"]} <= {"<=50K", ">50K"}

    feedback = post(server, "/feedback", {"request_id": body["request_id"], "row": 0, "label": ">50K"})
    assert feedback.status_code == 200 and feedback.json() == {"updated": 1}
    other = post(server, "/feedback", {"request_id": body["request_id"], "label": ">50K"}, key=KEYS[1])
    assert other.status_code == 404  # a client labels only its own predictions
    assert post(server, "/feedback", {"request_id": "0" * 32, "label": "maybe"}).status_code == 422


def test_identifiers_refused_and_never_logged(registered: Registered, server: dict) -> None:
    raw_row = registered.kept_raw_rows[20]
    person = registered.raw.iloc[raw_row]
    record = {**raw_record(registered, raw_row), "ssn": str(person["ssn"]), "name": str(person["name"])}
    refused = post(server, "/predict", record)
    assert refused.status_code == 400
    assert "'name' is a direct identifier" in refused.text and str(person["ssn"]) not in refused.text
    bad = post(server, "/predict", {**raw_record(registered, raw_row), "age": 1000})
    assert bad.status_code == 422 and "1000" not in bad.text  # the value is not echoed
    assert post(server, "/predict", {**raw_record(registered, raw_row), "shoe_size": 44}).status_code == 422

    log = sa.create_engine(f"sqlite:///{server['home'] / 'serving' / 'predictions.db'}")
    with log.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(sa.text("SELECT * FROM ppml_predictions"))]
    log.dispose()
    assert rows and all(len(r["request_id"]) == 32 and r["client"].startswith("client-") for r in rows)
    dump = json.dumps(rows, default=str)
    identifiers = registered.raw[["record_id", "name", "ssn", "email", "phone", "street_address"]].astype(str)
    for value in identifiers.to_numpy().ravel():
        assert value not in dump
    assert all(key not in dump for key in KEYS)
    released = json.loads(rows[0]["released_input"])
    spec = registered.spec["generalization"]
    assert released["native_country"] in set(spec["native_country"]["mapping"].values())  # labels, not raw values


def test_rate_limit_and_query_budget(registered: Registered, server: dict) -> None:
    record = raw_record(registered, registered.kept_raw_rows[1])
    codes = [post(server, "/predict", record, key=KEYS[1]).status_code for _ in range(RATE + 1)]
    assert codes[:RATE] == [200] * RATE and codes[RATE] == 429
    batch = {"records": [record] * 50}
    assert post(server, "/predict/batch", batch, key=KEYS[2]).status_code == 200
    over = post(server, "/predict/batch", {"records": [record] * (BUDGET - 50 + 1)}, key=KEYS[2])
    assert over.status_code == 429 and "query budget" in over.text
    assert post(server, "/predict/batch", {"records": [record] * 51}, key=KEYS[2]).status_code == 422  # max rows


def test_promotion_followed_without_dropping_requests_and_rollback(registered: Registered, server: dict) -> None:
    from typer.testing import CliRunner

    from ppml.cli import app

    record = raw_record(registered, registered.kept_raw_rows[2])
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set() and len(seen) < RATE - 2:
            response = post(server, "/predict", record, key=KEYS[3])
            seen.append((response.status_code, response.json().get("model_version", "")))
            time.sleep(0.1)

    worker = threading.Thread(target=traffic)
    worker.start()
    version = promote_again(registered)
    wait_for_version(server["base"], version)
    time.sleep(0.5)
    stop.set()
    worker.join()
    assert seen and all(code == 200 for code, _ in seen)
    assert {v for _, v in seen} <= {"1", version}
    assert post(server, "/predict", record).json()["model_version"] == version

    env = {"MLFLOW_TRACKING_URI": registered.tracking_uri}
    result = CliRunner().invoke(app, ["rollback", "--policy", str(registered.policy)], env=env)
    assert result.exit_code == 0 and f"from v{version} to v1" in result.output
    wait_for_version(server["base"], "1")
    again = CliRunner().invoke(app, ["rollback", "--policy", str(registered.policy)], env=env)
    assert again.exit_code == 2 and "no version before v1 was promoted" in again.output


def test_default_output_is_the_label_only(registered: Registered, tmp_path: Path) -> None:
    """The same version behind the policy's default coarsening and ``identifiers: drop`` (an in-process uvicorn
    on loopback): the label only, and an identifier dropped unscored and unlogged."""
    import uvicorn
    from mlflow import MlflowClient

    from ppml.policy import load_policy
    from ppml.serving.app import RegistryFollower, api_keys_from_env, create_app
    from ppml.serving.prediction_log import PredictionLog
    from ppml.serving.registry import load_production

    document = registered.policy.read_text().replace("output: probability", "output: label")
    document = document.replace("  poll_seconds:", "  identifiers: drop\n  poll_seconds:")
    policy = tmp_path / "policy.yaml"
    policy.write_text(document)
    loaded = load_policy(policy)
    client = MlflowClient(tracking_uri=registered.tracking_uri)
    follower = RegistryFollower(client, load_production(client, registered.model_name), 60.0)
    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}")
    app = create_app(loaded, follower, log, api_keys_from_env({"PPML_SERVE_API_KEY": KEYS[0]}))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.1)
        rows = [registered.kept_raw_rows[i] for i in range(5)]
        ssns = [str(registered.raw.iloc[r]["ssn"]) for r in rows]
        body = {"records": [{**raw_record(registered, r), "ssn": ssn} for r, ssn in zip(rows, ssns, strict=True)]}
        response = post({"base": f"http://127.0.0.1:{port}"}, "/predict/batch", body)
        assert response.status_code == 200, response.text
        assert all(set(p) == {"label"} for p in response.json()["predictions"])
        assert log.count() == 5
        dump = (tmp_path / "log.db").read_bytes()
        assert not any(ssn.encode() in dump for ssn in ssns)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        log.close()
