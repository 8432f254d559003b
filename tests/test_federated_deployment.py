"""The federation for real: a SuperLink and three SuperNode processes on loopback, through the Dagster assets to
a gated, registered model with per-site ledger charges; then a SuperNode killed mid-round.

Slow (each Flower message starts a ClientApp process); tiny rounds keep it to a few minutes on 2 loaded cores.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from ppml.errors import PPMLError
from ppml.federated.accounting import site_scope
from ppml.federated.runner import run_federation
from ppml.ledger import PrivacyLedger
from ppml.policy import load_policy
from ppml_assets.federated import (
    AUDIT_SERVER_OPENS_ENV,
    every_site_passed,
    federated_model,
    federated_resources,
    federated_sites,
    site_dir,
)
from resources import WorkspacePaths
from tests.federated_support import AS_OF, BUNDLED_DAYS, SITES, federated_policy, node_key_pairs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federated_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Materialize federated_sites (with its blocking check) and federated_model once for the module."""
    import os

    from dagster import DagsterInstance, materialize

    home = tmp_path_factory.mktemp("federated-home")
    policy_path = federated_policy(home / "policy", rounds=1, local_epochs=1, round_timeout_s=240)
    audit = home / "server-opens"
    os.environ[AUDIT_SERVER_OPENS_ENV] = str(audit)
    try:
        resources = federated_resources(
            home,
            policy_path,
            os.environ["PPML_HMAC_KEY"],
            f"sqlite:///{home / 'mlflow.db'}",
            f"sqlite:///{home / 'ledger.db'}",
        )
        result = materialize(
            [federated_sites, federated_model, every_site_passed],
            resources=resources,
            instance=DagsterInstance.ephemeral(),
            run_config={"ops": {"federated_sites": {"config": {"as_of": AS_OF, "bundled_days": BUNDLED_DAYS}}}},
            raise_on_error=False,
        )
    finally:
        os.environ.pop(AUDIT_SERVER_OPENS_ENV, None)
    return {"home": home, "policy": policy_path, "audit": audit, "result": result}


def test_federation_trains_gates_and_registers_with_per_site_charges(federated_run: dict) -> None:
    result, home = federated_run["result"], federated_run["home"]
    assert result.success
    model = result.output_for_node("federated_model")
    assert model["rounds_done"] == dict.fromkeys(SITES, 1)
    assert set(model["history"]["site_metrics"]) == set(SITES)  # every site evaluated the final model itself
    registry = model["registry"]
    assert registry["version"] == 1 and registry["promoted"] == all(r["passed"] for r in model["requirements"])
    report = Path(model["report"])
    evidence = json.loads((report.parent / "evidence.json").read_text())
    assert [site["name"] for site in evidence["sites"]] == SITES and evidence["federation"]["rounds"]
    assert all(site["preparation"]["passed"] and site["requirements"] for site in evidence["sites"])
    assert report.stat().st_mode & 0o077 == 0 and "Site east" in report.read_text()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert client.get_model_version(registry["registered_model"], "1").run_id == registry["mlflow_run_id"]
    ledger = PrivacyLedger(f"sqlite:///{home / 'ledger.db'}")
    loaded = load_policy(federated_run["policy"])
    for site in SITES:
        run = ledger.run(model["ledger_runs"][site])
        assert run.status == "completed" and run.partitions == (f"site:{site}",)
        assert 0 < run.epsilon_charged <= loaded.policy.privacy.epsilon
        audit = ledger.run(model["audits"][site]["ledger_run"])  # the site's white-box audit: its own scope
        assert audit.status == "completed" and audit.partitions == (f"site:{site}",) and audit.epsilon_charged > 0
        spent = ledger.spent(site_scope(loaded.policy.dataset.id, site), 1e-5).epsilon
        assert run.epsilon_charged < spent <= run.epsilon_charged + audit.epsilon_charged + 1e-6  # both, composed


def test_each_site_gates_its_group_error_rates_and_its_audit(federated_run: dict) -> None:
    """Per site: the FPR/FNR gap between protected groups (measured inside the site) and the white-box audit of
    its DP-SGD (run on its records); the gate holds both verdicts, and promotion follows every verdict."""
    model = federated_run["result"].output_for_node("federated_model")
    verdicts = {(r["scope"], r["requirement"]): r for r in model["requirements"]}
    for site in SITES:
        metrics = model["history"]["site_metrics"][site]
        gap = verdicts[(site, "max_group_error_rate_gap")]
        assert gap["measured"] == metrics["group_error_rate_gap"] and "group_error_rate_gap_point" in metrics
        audit, verdict = model["audits"][site], verdicts[(site, "whitebox_epsilon_within_claim")]
        assert verdict["passed"] is (not audit["alarm"]) and verdict["measured"] == audit["epsilon_lower_bound"]
        # the 8-day test sites have fewer than 2 x 200 validation records: LiRA says so and the site fails it
        lira, tpr = model["lira"][site], verdicts[(site, "max_membership_inference_tpr_at_low_fpr")]
        assert "reference_models" in lira["error"] and tpr["measured"] is None and not tpr["passed"]
    assert model["registry"]["promoted"] is all(r["passed"] for r in model["requirements"])
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{federated_run['home'] / 'mlflow.db'}")
    logged = client.get_run(model["registry"]["mlflow_run_id"]).data.metrics
    assert {f"{s}.group_error_rate_gap" for s in SITES} | {f"{s}.audit_epsilon_lower_bound" for s in SITES} <= set(
        logged
    )
    html = Path(model["report"]).read_text()
    assert html.count("White-box audit (on the site's own training records") == len(SITES)
    assert html.count('Offline LiRA: <b class="fail">not run</b>') == len(SITES)


def test_the_server_side_opens_no_site_file(federated_run: dict) -> None:
    logs = {path.name.split(".")[0]: path.read_text() for path in federated_run["audit"].glob("*.log")}
    assert {"flower-superlink", "flwr-serverapp"} <= set(logs)  # the audit hook ran in the server processes
    assert all(text.strip() for text in logs.values())
    home = federated_run["home"]
    site_roots = [str(home / "federated" / name) for name in ("north", "south", "east")]
    for process, text in logs.items():
        opened = text.splitlines()
        assert not [p for p in opened if any(p.startswith(root) for root in site_roots)], process


def _kill_when_training(federation, site: str, killed: threading.Event) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL the site's SuperNode as soon as it has started a ClientApp for the round (mid-round)."""

    def watch() -> None:
        log = federation.log_path(f"supernode-{site}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if log.is_file() and "Start `flwr-clientapp` process" in log.read_text(errors="replace"):
                federation.kill_site(site)
                killed.set()
                return
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def test_a_supernode_killed_mid_round(federated_run: dict, tmp_path: Path) -> None:
    home = federated_run["home"]
    policy_path = federated_policy(
        tmp_path / "policy", rounds=1, local_epochs=1, secure_aggregation=False, min_sites=2, round_timeout_s=45
    )
    loaded = load_policy(policy_path)
    prepared = load_policy(federated_run["policy"])  # the module's run prepared the sites (same people, data)
    sites = {name: site_dir(WorkspacePaths(home=str(home)), prepared, name) for name in SITES}
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    killed = threading.Event()
    try:
        outcome = run_federation(
            loaded,
            sites,
            tmp_path / "federation",
            ledger,
            request_key="kill",
            on_started=lambda federation: _kill_when_training(federation, "east", killed),
        )
    except PPMLError as error:  # failing cleanly is allowed: one line, every site keeps its pre-charge
        assert killed.is_set() and "\n" not in str(error)
        runs = ledger.runs()
        assert {r.status for r in runs} == {"failed"} and len(runs) == 3
        assert all(r.epsilon_charged > 0 for r in runs)
        return
    assert killed.is_set()
    assert outcome.history["rounds"][0]["results"] == 2  # the round completed with the two remaining sites
    runs = {site: ledger.run(run_id) for site, run_id in outcome.ledger_runs.items()}
    assert runs["east"].status == "failed" and runs["east"].epsilon_charged == pytest.approx(
        outcome.plans["east"].epsilon
    )
    assert runs["north"].status == runs["south"].status == "completed"


def _tls_files(folder: Path) -> dict[str, str]:
    """A throwaway CA and a SuperLink certificate for 127.0.0.1, written as PEM files (cryptography)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ppml test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca_certificate": "ca.pem", "server_certificate": "server.pem", "server_key": "server.key"}
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (folder / "server.key").chmod(0o600)
    return {name: str(folder / file) for name, file in files.items()}


def test_client_level_dp_under_secure_aggregation_over_tls(federated_run: dict, tmp_path: Path) -> None:
    """Every connection verified against the CA (no --insecure anywhere), SecAgg+ on, and DP-FedAvg's server
    noise added to the secure sum: the round completes with every site and each site's ledger run settles."""
    home = federated_run["home"]
    tls = _tls_files(tmp_path / "tls")
    keys = node_key_pairs(tmp_path / "keys", SITES)
    policy_path = federated_policy(
        tmp_path / "policy",
        rounds=1,
        local_epochs=1,
        dp_mode="client",
        secure_aggregation=True,
        min_sites=2,
        round_timeout_s=240,
        tls=tls,
        node_authentication={"sites": keys},
    )
    prepared = load_policy(federated_run["policy"])
    sites = {name: site_dir(WorkspacePaths(home=str(home)), prepared, name) for name in SITES}
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    commands: dict[str, list[str]] = {}
    try:
        outcome = run_federation(
            load_policy(policy_path),
            sites,
            tmp_path / "federation",
            ledger,
            request_key="tls",
            on_started=lambda federation: commands.update({n: p.args for n, p in federation.processes.items()}),
        )
        runs = [ledger.run(run_id) for run_id in outcome.ledger_runs.values()]
    finally:
        ledger.close()
    assert all("--insecure" not in args for args in commands.values()) and len(commands) == 1 + len(SITES)
    assert tls["server_key"] in commands["superlink"] and "--enable-supernode-auth" in commands["superlink"]
    assert all(tls["ca_certificate"] in commands[f"supernode-{site}"] for site in SITES)
    # node authentication: every site registered, and every SuperNode signing with its own private key
    assert all(keys[site]["private_key"] in commands[f"supernode-{site}"] for site in SITES)
    registered = (tmp_path / "federation" / "logs" / "flwr-register.log").read_text()
    assert registered.count("registered successfully") == len(SITES)
    config = (tmp_path / "federation" / "flwr" / "server" / "config.toml").read_text()
    assert "root-certificates" in config and "insecure" not in config
    assert outcome.history["rounds"][0]["results"] == len(SITES)
    assert {plan.mode for plan in outcome.plans.values()} == {"client"}
    assert all(run.status == "completed" and run.epsilon_charged > 0 for run in runs)
    # the client-level audit of this very run (as federated_model calls it): the run's config and model shapes
    from ppml.federated.audit import audit_client_dp
    from ppml.federated.gate import FEDERATION_SCOPE, federated_requirements

    loaded = load_policy(policy_path)
    outcome.client_audit = audit_client_dp(loaded, outcome)
    assert outcome.client_audit is not None and outcome.client_audit["details"]["secure_aggregation"] is True
    assert outcome.client_audit["details"]["dimension"] == sum(w.size for w in outcome.weights)
    [verdict] = [v for v in federated_requirements(loaded.policy, outcome) if v.scope == FEDERATION_SCOPE]
    assert verdict.requirement == "client_level_epsilon_within_claim" and verdict.passed


def test_an_unreadable_tls_file_refuses_the_run_before_any_charge(tmp_path: Path) -> None:
    tls = {"ca_certificate": "missing-ca.pem", "server_certificate": "server.pem", "server_key": "server.key"}
    policy_path = federated_policy(tmp_path / "policy", tls=tls)
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with pytest.raises(PPMLError, match=r"training\.federation\.tls\.ca_certificate") as refused:
            run_federation(load_policy(policy_path), {}, tmp_path / "federation", ledger, request_key="bad-tls")
        assert "\n" not in str(refused.value) and "fix:" in str(refused.value)
        assert ledger.runs() == []
    finally:
        ledger.close()


def test_a_supernode_with_an_unregistered_key_is_refused(tmp_path: Path) -> None:
    """Node authentication for real, no run: the SuperLink registers north's and south's public keys, but south's
    SuperNode signs with another key; the SuperLink refuses to activate it (the SuperNode exits, saying so) while
    north, signing with its registered key, is activated and stays connected."""
    from ppml.federated.deployment import Federation, TlsFiles
    from ppml.federated.node_auth import NodeKeyFiles

    tls = TlsFiles(**{name: Path(path) for name, path in _tls_files(tmp_path / "tls").items()})
    keys = node_key_pairs(tmp_path / "keys", ["north", "south"])
    stranger = node_key_pairs(tmp_path / "stranger", ["south"])["south"]
    node_keys = {
        "north": NodeKeyFiles(Path(keys["north"]["private_key"]), Path(keys["north"]["public_key"])),
        "south": NodeKeyFiles(Path(stranger["private_key"]), Path(keys["south"]["public_key"])),
    }
    sites = {site: tmp_path / site for site in node_keys}
    with Federation(tmp_path / "federation", sites, tls=tls, node_keys=node_keys) as federation:
        south, north = federation.processes["supernode-south"], federation.processes["supernode-north"]
        activated = "[Fleet.ActivateNode] Activated node_id="
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            south.poll() is None or activated not in federation.log_path("superlink").read_text()
        ):
            time.sleep(0.2)
        assert south.returncode not in (None, 0)
        assert "[code: 2004] Failed to activate SuperNode" in federation.log_path("supernode-south").read_text()
        assert north.poll() is None
        [north_id] = [
            line.split(activated)[1].split()[0] for line in federation.log_path("superlink").open() if activated in line
        ]
        assert f"SuperNode ID: {north_id}" in federation.log_path("supernode-north").read_text()
