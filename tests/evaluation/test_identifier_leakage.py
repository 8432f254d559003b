"""The direct-identifier scan: names and values, in features, files, archives and MLflow params."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from ppml.errors import PPMLError
from ppml.evaluation import leakage_verdict, scan_for_identifiers

IDENTIFIERS = ["record_id", "name", "email", "ssn"]
EMAIL = "jane.roe@example.org"
SSN = "123-45-6789"
PSEUDONYM = hashlib.sha256(b"key|R-000123").hexdigest()
VALUES = {"email": [EMAIL, "x@y"], "ssn": [SSN], "record_id": [PSEUDONYM], "name": ["Jane Roe", None]}


def _clean_artifacts(root: Path) -> None:
    (root / "model").mkdir(parents=True)
    (root / "model" / "MLmodel").write_text("name: income-mlp\nflavors:\n  pytorch: {}\n")
    (root / "metrics.json").write_text(json.dumps({"accuracy": 0.84, "features": ["age", "sex=Male"]}))
    (root / "weights.bin").write_bytes(bytes(range(256)) * 64)


def test_clean_run_passes(tmp_path: Path) -> None:
    _clean_artifacts(tmp_path)
    report = scan_for_identifiers(
        IDENTIFIERS,
        identifier_values=VALUES,
        feature_names=["age", "sex=Male", "native_country=United-States", "hours_per_week"],
        column_names=["age", "sex", "label"],
        artifact_dir=tmp_path,
        params={"lr": 0.1, "features": "age,sex,hours_per_week", "model": "mlp(64)"},
        tags={"mlflow.runName": "dp-train", "policy_hash": "abc"},
    )
    assert report.passed, report.findings
    assert leakage_verdict(report).passed
    assert report.scanned["files"] == 3 and report.scanned["params"] == 3
    assert report.skipped["short_values"] == 1  # "x@y" would match by chance


def test_identifier_columns_and_values_are_found_everywhere(tmp_path: Path) -> None:
    _clean_artifacts(tmp_path)
    (tmp_path / "debug_sample.csv").write_text(f"age,contact\n39,{EMAIL.upper()}\n")
    with zipfile.ZipFile(tmp_path / "model.pt", "w") as archive:  # torch checkpoints are zip archives
        archive.writestr("archive/data.pkl", b"\x80\x04" + PSEUDONYM.encode() + b"\x94")
    (tmp_path / "notes.txt").write_text("reviewed by Jane Roe.")
    (tmp_path / f"{SSN}.json").write_text("{}")
    report = scan_for_identifiers(
        IDENTIFIERS,
        identifier_values=VALUES,
        feature_names=["age", "email=jane.roe@example.org", "SSN"],
        artifact_dir=tmp_path,
        params={"sample": f"ssn {SSN}", "columns": "['age', 'record_id']"},
    )
    found = {(f.identifier, f.kind, f.where, f.location) for f in report.findings}
    assert ("email", "column_name", "features", "features[1]") in found
    assert ("email", "value", "features", "features[1]") in found
    assert ("ssn", "column_name", "features", "features[2]") in found
    assert ("email", "value", "artifact", "debug_sample.csv") in found
    assert ("record_id", "value", "artifact", "model.pt!archive/data.pkl") in found
    assert ("name", "value", "artifact", "notes.txt") in found
    assert ("ssn", "value", "mlflow_param", "sample") in found
    assert ("record_id", "column_name", "mlflow_param", "columns") in found
    assert any(f.identifier == "ssn" and f.where == "artifact" and "withheld" in f.location for f in report.findings)
    verdict = leakage_verdict(report)
    assert not verdict.passed and verdict.measured == len(report.findings)

    # Evidence names columns and places, never the personal value itself.
    evidence = json.dumps(report.to_dict()) + json.dumps(verdict.to_dict())
    for secret in (SSN, PSEUDONYM, "Jane Roe", "jane.roe", "example.org"):
        assert secret.lower() not in evidence.lower()


def test_bad_scan_input(tmp_path: Path) -> None:
    with pytest.raises(PPMLError, match="identifier_columns"):
        scan_for_identifiers([])
    with pytest.raises(PPMLError, match="artifact_dir"):
        scan_for_identifiers(IDENTIFIERS, artifact_dir=tmp_path / "missing")
