"""The command line and the code location as the Dagster tools load it."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support import GDPR_POLICY, REPO_ROOT

BIN = Path(sys.executable).parent


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "ppml"), *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300
    )


def test_validate_policy_prints_the_version() -> None:
    completed = _run("validate-policy", str(GDPR_POLICY))
    assert completed.returncode == 0, completed.stderr
    assert "is valid" in completed.stdout and "content hash" in completed.stdout


def test_validate_policy_reports_one_line_and_exit_code_2(tmp_path: Path) -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["privacy"]["delta"] = "tiny"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    completed = _run("validate-policy", str(bad))
    assert completed.returncode == 2
    line = " ".join(completed.stderr.split())
    assert f"{bad}: field 'privacy.delta'" in line and "fix:" in line
    assert "Traceback" not in completed.stderr


def test_validate_policy_against_a_landing_file(tmp_path: Path, landing_zone: Path) -> None:
    landing = next(landing_zone.glob("event_date=*/records.csv"))
    assert _run("validate-policy", str(GDPR_POLICY), "--data", str(landing)).returncode == 0
    header_only = tmp_path / "other.csv"
    header_only.write_text("age,sex\n40,Male\n")
    completed = _run("validate-policy", str(GDPR_POLICY), "--data", str(header_only))
    assert completed.returncode == 2 and "unknown column" in completed.stderr


def test_code_location_validates_with_the_dagster_cli(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    completed = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "All code locations passed validation" in completed.stdout + completed.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_dagster_webserver_serves_the_lineage(tmp_path: Path) -> None:
    """What `dagster dev -w workspace.yaml` shows: the code location loads and every stage's lineage is there."""
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    server = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    query = {
        "query": "{ assetNodes { assetKey { path } dependencyKeys { path } } "
        "workspaceOrError { ... on Workspace { locationEntries { name locationOrLoadError { __typename } } } } }"
    }
    try:
        deadline = time.time() + 180
        payload = None
        while time.time() < deadline:
            try:
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=json.dumps(query).encode(),
                    headers={"Content-Type": "application/json"},
                )
                payload = json.loads(urllib.request.urlopen(request, timeout=10).read())
                if payload.get("data", {}).get("assetNodes"):
                    break
            except OSError:
                pass
            time.sleep(2)
        assert payload is not None, "the webserver did not answer"
        entries = payload["data"]["workspaceOrError"]["locationEntries"]
        assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in entries] == [
            ("ppml", "RepositoryLocation")
        ]
        lineage = {
            "/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
            for n in payload["data"]["assetNodes"]
        }
        assert lineage["deidentified_records"] == {"raw_records"}
        assert lineage["anonymized_records"] == {"deidentified_records"}
        assert {"dp_model"} <= lineage["registered_model"] and "compliance_status" in lineage["registered_model"]
        assert "training_features" in lineage["dp_model"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
