"""The evidence pack's engine on small stored files: sign, verify, and name whatever byte was changed."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppml.errors import PPMLError
from ppml.evidence import signing
from ppml.evidence.pack import MANIFEST, NodeSpec, write_pack
from ppml.evidence.verify import verify_pack

MODEL = {"model_name": "m", "version": "3", "mlflow_run_id": "r1", "as_of": "2026-04-30"}


def _flip(path: Path, offset: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    """assets/raw (disposed, recorded) -> assets/deid -> assets/features -> report/evidence.json, report.html."""
    assets, report = tmp_path / "assets", tmp_path / "reports" / "2026-04-30"
    assets.mkdir()
    report.mkdir(parents=True)
    (assets / "deid.parquet").write_bytes(b"PAR1 de-identified rows")
    (assets / "features.parquet").write_bytes(b"PAR1 feature matrix")
    (report / "evidence.json").write_text('{"k": 5}')
    (report / "report.html").write_text("<html>report</html>")
    nodes = [
        NodeSpec("raw_records/2026-04-30", (), None, "ab" * 32, "disposed"),
        NodeSpec("deidentified_records/2026-04-30", ("raw_records/2026-04-30",), str(assets / "deid.parquet")),
        NodeSpec(
            "training_features/2026-04-30", ("deidentified_records/2026-04-30",), str(assets / "features.parquet")
        ),
        NodeSpec("report/evidence.json", ("training_features/2026-04-30",), str(report / "evidence.json")),
        NodeSpec("report/report.html", ("training_features/2026-04-30",), str(report / "report.html")),
    ]
    key = signing.parse_private_key(signing.new_key_text())
    write_pack(nodes, MODEL, report, key)
    return report


def test_a_fresh_pack_verifies_and_locations_are_relative(pack: Path) -> None:
    result = verify_pack(pack)
    assert result.ok, result.problems
    assert result.files_checked == 4
    manifest = json.loads((pack / MANIFEST).read_text())
    assert manifest["nodes"]["deidentified_records/2026-04-30"]["location"] == "../../assets/deid.parquet"
    assert manifest["nodes"]["model_version"]["inputs"] == ["report/evidence.json", "report/report.html"]
    assert any("cannot be recomputed" in note for note in result.notes)


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("../../assets/deid.parquet", "deidentified_records/2026-04-30: artifact changed"),
        ("../../assets/features.parquet", "training_features/2026-04-30: artifact changed"),
        ("report.html", "report/report.html: artifact changed"),
        ("evidence.json", "report/evidence.json: artifact changed"),
    ],
)
def test_one_changed_byte_of_an_artifact_names_it(pack: Path, target: str, named: str) -> None:
    _flip(pack / target, offset=3)
    result = verify_pack(pack)
    assert not result.ok
    assert any(problem.startswith(named) for problem in result.problems), result.problems


def test_one_changed_byte_of_the_manifest_breaks_the_signature(pack: Path) -> None:
    text = (pack / MANIFEST).read_text()
    position = text.index('"version": "3"') + len('"version": "')
    (pack / MANIFEST).write_text(text[:position] + "4" + text[position + 1 :])
    problems = verify_pack(pack).problems
    assert any(p.startswith(f"{MANIFEST}: signature does not match") for p in problems), problems


def test_a_consistent_forgery_fails_against_the_controllers_key(pack: Path, tmp_path: Path) -> None:
    """Re-hashing and re-signing with another key passes against the pack's own key, not the published one."""
    published = tmp_path / "controller.pub"
    published.write_text((pack / "signing_key.pub").read_text())
    _flip(pack / "report.html", offset=1)
    manifest = json.loads((pack / MANIFEST).read_text())
    nodes = [
        NodeSpec(
            node_id,
            tuple(node["inputs"]),
            str((pack / node["location"]).resolve()) if node["location"] else None,
            None if node["location"] else node["sha256"],
        )
        for node_id, node in manifest["nodes"].items()
        if node_id != "model_version"
    ]
    write_pack(nodes, MODEL, pack, signing.parse_private_key(signing.new_key_text()))
    assert verify_pack(pack).ok
    forged = verify_pack(pack, published)
    assert [p for p in forged.problems if "signature does not match" in p]


def test_verify_cli_exit_codes(pack: Path) -> None:
    from ppml.cli import app

    ok = CliRunner().invoke(app, ["verify", str(pack)])
    assert ok.exit_code == 0 and "OK" in ok.stdout and "pass --public-key" in ok.stdout
    trusted = CliRunner().invoke(app, ["verify", str(pack), "--public-key", str(pack / "signing_key.pub")])
    assert trusted.exit_code == 0 and "trusted key" in trusted.stdout
    other = pack.parent / "other.pub"
    other.write_text(signing.public_key_pem(signing.parse_private_key(signing.new_key_text())))
    refused = CliRunner().invoke(app, ["verify", str(pack), "--public-key", str(other)])
    assert refused.exit_code == 1 and "signature does not match" in refused.stderr
    _flip(pack / "../../assets/deid.parquet")
    failed = CliRunner().invoke(app, ["verify", str(pack)])
    assert failed.exit_code == 1
    assert "deidentified_records/2026-04-30: artifact changed" in failed.stderr
    missing = CliRunner().invoke(app, ["verify", str(pack.parent)])
    assert missing.exit_code == 2 and "evidence_pack.json: field '(file)': missing" in missing.stderr


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "missing"),
        ("not base64 at all!", "neither PEM nor base64"),
        (base64.b64encode(b"short").decode(), "decodes to 5 bytes"),
        ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "not a readable PEM"),
    ],
)
def test_bad_signing_key_is_one_line(value: str, problem: str) -> None:
    with pytest.raises(PPMLError) as error:
        signing.signing_key_from_env({"PPML_SIGNING_KEY": value})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("environment: field 'PPML_SIGNING_KEY': ") and problem in message and "fix:" in message


def test_pem_keys_are_accepted() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    assert signing.fingerprint(signing.signing_key_from_env({"PPML_SIGNING_KEY": pem})) == signing.fingerprint(key)


def test_only_the_demo_generates_a_signing_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppml.workspace import prepare_workspace

    for name in ("PPML_HOME", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "PPML_SIGNING_KEY"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored afterwards: prepare_workspace sets them
    monkeypatch.delenv("PPML_SIGNING_KEY")
    with pytest.raises(PPMLError, match=r"^environment: field 'PPML_SIGNING_KEY': missing; fix: export"):
        prepare_workspace(tmp_path / "run", demo_key="never")
    assert not (tmp_path / "run").exists(), "nothing may be created before the key is checked"
    workspace, notes = prepare_workspace(tmp_path / "demo", demo_key="create")
    key_file = workspace.home / "secrets" / "demo_signing_key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert os.environ["PPML_SIGNING_KEY"] == key_file.read_text().strip()
    assert any("PPML_SIGNING_KEY is not set" in note for note in notes)
