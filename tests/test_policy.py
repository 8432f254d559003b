"""Policy as code: the shipped policies validate; every kind of mistake is one clear line."""

from __future__ import annotations

import shutil
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


def _policy_tree(tmp_path: Path) -> Path:
    """A copy of the shipped GDPR policy with every file it names, at the same relative paths."""
    repo = GDPR_POLICY.parent.parent
    shutil.copytree(repo / "ppml/data/adult/hierarchies", tmp_path / "ppml/data/adult/hierarchies")
    (tmp_path / "data").mkdir()
    shutil.copy(repo / "data/erasure_requests.csv", tmp_path / "data/erasure_requests.csv")
    (tmp_path / "policies").mkdir()
    return Path(shutil.copy(GDPR_POLICY, tmp_path / "policies/policy.yaml"))


def test_hash_ignores_formatting_but_not_content(tmp_path: Path) -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    reformatted = _policy_tree(tmp_path)
    reformatted.write_text("# a comment\n" + yaml.safe_dump(document, sort_keys=False))
    assert load_policy(reformatted, check_files=False).content_hash == load_policy(GDPR_POLICY).content_hash
    document["privacy"]["k"] = 10
    reformatted.write_text(yaml.safe_dump(document))
    assert load_policy(reformatted, check_files=False).content_hash != load_policy(GDPR_POLICY).content_hash


@pytest.mark.parametrize(
    "named_file",
    ["ppml/data/adult/hierarchies/education.csv", "data/erasure_requests.csv"],
)
def test_editing_a_named_file_changes_the_policy_version(tmp_path: Path, named_file: str) -> None:
    path = _policy_tree(tmp_path)
    before = load_policy(path).content_hash
    assert before == load_policy(GDPR_POLICY).content_hash  # same text, same files: same version
    edited = tmp_path / named_file
    lines = edited.read_text().splitlines()  # same rows in another order: still valid, other bytes
    edited.write_text("\n".join([lines[0], lines[-1], *lines[1:-1]]) + "\n")
    assert load_policy(path).content_hash != before


def test_t_closeness_hierarchy_is_part_of_the_version(tmp_path: Path) -> None:
    path = _policy_tree(tmp_path)
    document = yaml.safe_load(path.read_text())
    occupation = tmp_path / "occupation.csv"
    occupation.write_text("Sales;Office;*\nTech-support;Office;*\n")
    document["privacy"]["t_closeness"] = [
        {"attribute": "occupation", "t": 0.5, "variant": "hierarchical", "hierarchy": "../occupation.csv"}
    ]
    path.write_text(yaml.safe_dump(document))
    before = load_policy(path).content_hash
    occupation.write_text("Sales;Office;*\nTech-support;Tech;*\n")
    assert load_policy(path).content_hash != before


def test_rename_keeps_the_dataset_identity_and_a_missing_identity_is_one_line(tmp_path: Path) -> None:
    renamed = _write_variant(tmp_path, lambda d: d.__setitem__("name", "income-credit-offers"))
    assert load_policy(renamed, check_files=False).policy.dataset == load_policy(GDPR_POLICY).policy.dataset
    assert load_policy(HIPAA_POLICY).policy.dataset == load_policy(GDPR_POLICY).policy.dataset  # same people
    missing = _write_variant(tmp_path, lambda d: d.pop("dataset"))
    with pytest.raises(PPMLError) as error:
        load_policy(missing, check_files=False)
    assert "field 'dataset'" in str(error.value) and "fix:" in str(error.value) and "\n" not in str(error.value)
    bad_id = _write_variant(tmp_path, lambda d: d["dataset"].__setitem__("id", "Adult Census"))
    with pytest.raises(PPMLError, match=r"field 'dataset\.id'"):
        load_policy(bad_id, check_files=False)
    no_namespace = _write_variant(tmp_path, lambda d: d["dataset"].pop("subject_namespace"))
    with pytest.raises(PPMLError, match=r"field 'dataset\.subject_namespace'"):
        load_policy(no_namespace, check_files=False)


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
