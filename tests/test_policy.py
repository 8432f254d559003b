"""Policy as code: the shipped policies validate; every kind of mistake is one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ppml.errors import PPMLError
from ppml.policy import check_columns_exist, load_policy
from tests.support import GDPR_POLICY, HIPAA_POLICY


@pytest.mark.parametrize("path", [GDPR_POLICY, HIPAA_POLICY])
def test_shipped_policies_validate(path: Path) -> None:
    loaded = load_policy(path)
    assert len(loaded.content_hash) == 64
    assert loaded.policy.privacy.k >= 2
    assert all(p.is_file() for p in loaded.hierarchy_paths().values())


def test_hash_ignores_formatting_but_not_content(tmp_path: Path) -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    reformatted = tmp_path / "policy.yaml"
    reformatted.write_text("# a comment\n" + yaml.safe_dump(document, sort_keys=False))
    assert load_policy(reformatted, check_files=False).content_hash == load_policy(GDPR_POLICY).content_hash
    document["privacy"]["k"] = 10
    reformatted.write_text(yaml.safe_dump(document))
    assert load_policy(reformatted, check_files=False).content_hash != load_policy(GDPR_POLICY).content_hash


def _write_variant(tmp_path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(GDPR_POLICY.read_text())
    change(document)
    path = tmp_path / "bad_policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


BAD_POLICIES = [
    ("missing required field", lambda d: d["privacy"].pop("k"), "privacy.k", "add the field"),
    ("wrong type", lambda d: d["privacy"].__setitem__("epsilon", "lots"), "privacy.epsilon", "expected type"),
    ("unknown field", lambda d: d["privacy"].__setitem__("kk", 3), "privacy.kk", "spelling"),
    ("out of range", lambda d: d["privacy"].__setitem__("epsilon", -1), "privacy.epsilon", "fix:"),
    ("bad enum", lambda d: d["use_case"].__setitem__("regulation", "CCPA"), "use_case.regulation", "allowed values"),
    (
        "feature that is an identifier",
        lambda d: d["schema"]["features"].append("ssn"),
        "schema",
        "remove it from schema.features",
    ),
    (
        "risk limit below 1/k",
        lambda d: d["privacy"].__setitem__("max_reidentification_risk", 0.05),
        "(document)",
        "raise k to at least 20",
    ),
    (
        "MIA AUC limit below chance",
        lambda d: d["privacy"].__setitem__("max_membership_inference_auc", 0.4),
        "privacy.max_membership_inference_auc",
        "fix:",
    ),
    ("FPR outside (0, 1)", lambda d: d["privacy"].__setitem__("low_fpr", 1.5), "privacy.low_fpr", "fix:"),
    (
        "l-diversity on a non-sensitive column",
        lambda d: d["privacy"]["l_diversity"][0].__setitem__("attribute", "race"),
        "(document)",
        "sensitive_attributes",
    ),
]


@pytest.mark.parametrize(("case", "change", "field", "fix"), BAD_POLICIES, ids=[c[0] for c in BAD_POLICIES])
def test_bad_policy_gives_one_line_naming_file_field_and_fix(tmp_path: Path, case, change, field, fix) -> None:  # type: ignore[no-untyped-def]
    path = _write_variant(tmp_path, change)
    with pytest.raises(PPMLError) as error:
        load_policy(path, check_files=False)
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    assert f"field '{field}'" in message
    assert "fix:" in message and fix in message


def test_missing_hierarchy_file_is_reported(tmp_path: Path) -> None:
    path = _write_variant(
        tmp_path, lambda d: d["schema"]["quasi_identifiers"]["age"].__setitem__("hierarchy", "no.csv")
    )
    with pytest.raises(PPMLError, match=r"schema\.quasi_identifiers\.age\.hierarchy.*not found"):
        load_policy(path)


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("privacy: [unclosed\n")
    with pytest.raises(PPMLError, match="not valid YAML"):
        load_policy(broken)
    with pytest.raises(PPMLError, match="policy file not found"):
        load_policy(tmp_path / "absent.yaml")


def test_policy_naming_an_unknown_column_is_reported() -> None:
    policy = load_policy(GDPR_POLICY).policy
    with pytest.raises(
        PPMLError, match=r"landing/x.csv: field 'schema\.subject_id': unknown column 'record_id'.*fix: correct"
    ):
        check_columns_exist(policy, {"age"}, "landing/x.csv")
