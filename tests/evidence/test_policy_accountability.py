"""What the documents need from the policy: controller, DPO, recipients, transfers and the Art. 9(2) condition."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ppml.errors import PPMLError
from ppml.policy import load_policy
from ppml.special_categories import special_category_columns
from tests.support import GDPR_POLICY, HIPAA_POLICY


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "policy.yaml"  # check_files=False: the hierarchies it names need not exist beside it
    path.write_text(yaml.safe_dump(document))
    return path


def test_bundled_policies_state_what_the_records_need() -> None:
    gdpr = load_policy(GDPR_POLICY).policy
    assert gdpr.use_case.dpo and gdpr.use_case.recipients and gdpr.use_case.transfers == []
    assert gdpr.use_case.special_category_basis == "archiving_research_statistics"
    assert gdpr.special_category_columns() == {"race": "racial or ethnic origin"}
    hipaa = load_policy(HIPAA_POLICY).policy
    assert hipaa.use_case.dpo and hipaa.use_case.special_category_basis is None  # Art. 9 is GDPR's


def test_a_gdpr_policy_using_race_without_an_article_9_condition_is_refused(tmp_path: Path) -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    del document["use_case"]["special_category_basis"]
    with pytest.raises(PPMLError) as error:
        load_policy(_write(tmp_path, document), check_files=False)
    message = str(error.value)
    assert "\n" not in message and "policy.yaml: field" in message
    assert "race (racial or ethnic origin)" in message and "use_case.special_category_basis" in message
    assert "fix: state the GDPR Art. 9(2) condition" in message


def test_a_bad_article_9_condition_names_the_allowed_values(tmp_path: Path) -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["use_case"]["special_category_basis"] = "because"
    with pytest.raises(PPMLError, match=r"use_case.special_category_basis.*fix: use one of the allowed values"):
        load_policy(_write(tmp_path, document), check_files=False)


def test_special_categories_are_recognised_by_name_but_sex_alone_is_not_one() -> None:
    found = special_category_columns(["race", "Ethnicity", "health", "diagnosis_code", "sex", "gender", "religion"])
    assert found == {
        "race": "racial or ethnic origin",
        "Ethnicity": "racial or ethnic origin",
        "health": "health",
        "diagnosis_code": "health",
        "religion": "religious or philosophical beliefs",
    }
