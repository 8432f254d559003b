"""De-identification: no raw direct identifier survives; Safe Harbor rules hold; keys come from the environment."""

from __future__ import annotations

import pandas as pd
import pytest

from ppml.deidentification import (
    RESTRICTED_ZIP3,
    SPLIT_BUCKET_COLUMN,
    deidentify,
    hmac_key_from_env,
    pseudonymize,
    raw_identifier_leaks,
    zip3,
)
from ppml.errors import PPMLError
from ppml.landing_zone import synthesize_records
from ppml.policy import load_policy
from tests.support import GDPR_POLICY, HIPAA_POLICY, TEST_FIRST_DAY

KEY = b"k" * 32


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return synthesize_records(only_days=[TEST_FIRST_DAY])


def test_gdpr_drops_or_pseudonymizes_every_identifier(raw: pd.DataFrame) -> None:
    policy = load_policy(GDPR_POLICY).policy
    out, report = deidentify(raw, policy, KEY, "test")
    assert {"name", "ssn", "email", "phone", "street_address", "zip", "date_of_birth"}.isdisjoint(out.columns)
    assert out["record_id"].str.fullmatch(r"[0-9a-f]{32}").all()
    assert not out["record_id"].isin(raw["record_id"]).any()
    assert raw_identifier_leaks(raw, out, policy) == []
    assert out[SPLIT_BUCKET_COLUMN].between(0, 99).all()
    assert report.actions["record_id"] == "pseudonymize"


def test_pseudonyms_are_stable_per_key_and_differ_across_keys(raw: pd.DataFrame) -> None:
    policy = load_policy(GDPR_POLICY).policy
    first, _ = deidentify(raw, policy, KEY, "test")
    again, _ = deidentify(raw, policy, KEY, "test")
    other, _ = deidentify(raw, policy, b"x" * 32, "test")
    assert first["record_id"].equals(again["record_id"])
    assert not first["record_id"].isin(other["record_id"]).any()


def _variant(change):  # type: ignore[no-untyped-def]
    policy = load_policy(GDPR_POLICY).policy
    return policy.model_validate(change(policy.model_dump(by_alias=True)))


def test_pseudonyms_are_separated_per_purpose_and_stable_per_policy(raw: pd.DataFrame) -> None:
    policy = load_policy(GDPR_POLICY).policy
    first, _ = deidentify(raw, policy, KEY, "test")

    def other_purpose(document):  # type: ignore[no-untyped-def]
        document["use_case"]["purpose"] = "Fraud screening of card applications, a purpose of its own."
        return document

    def renamed(document):  # type: ignore[no-untyped-def]
        document["name"] = "income-credit-offers-v2"
        document["training"]["epochs"] = 9
        document["use_case"]["purpose"] = "  " + document["use_case"]["purpose"].replace(" ", "\n ", 3)
        return document

    def other_people(document):  # type: ignore[no-untyped-def]
        document["dataset"]["id"] = "adult-census-resurvey"
        return document

    purpose, _ = deidentify(raw, _variant(other_purpose), KEY, "test")
    assert not first["record_id"].isin(purpose["record_id"]).any()  # one key, two purposes: nothing joins
    people, _ = deidentify(raw, _variant(other_people), KEY, "test")
    assert not first["record_id"].isin(people["record_id"]).any()
    again, _ = deidentify(raw, _variant(renamed), KEY, "test")  # renamed, re-versioned, re-wrapped purpose
    assert first["record_id"].equals(again["record_id"])
    assert first[SPLIT_BUCKET_COLUMN].equals(again[SPLIT_BUCKET_COLUMN])
    master, _ = deidentify(raw.head(5), policy, KEY, "test")
    plain = pseudonymize(raw["record_id"].head(5), KEY, "record_id")
    assert not master["record_id"].isin(plain).any()  # the master key itself is never the HMAC key


def test_hipaa_safe_harbor(raw: pd.DataFrame) -> None:
    policy = load_policy(HIPAA_POLICY).policy
    elderly = raw.copy()
    elderly.loc[0, "age"] = 95
    elderly.loc[1, "zip"] = "03612"  # 036 is a restricted low-population prefix
    out, report = deidentify(elderly, policy, KEY, "test")
    assert out["age"].max() <= 90 and report.ages_top_coded >= 1
    assert out.loc[1, "zip"] == "000" and out["zip"].str.fullmatch(r"\d{3}").all()
    assert set(out["event_date"]) == {2026}
    assert "record_id" not in out.columns  # Safe Harbor (R): no code derived from the identifier
    checklist = {row["category"]: row for row in report.safe_harbor_checklist}
    assert len(checklist) == 18
    assert checklist["A"]["verdict"] == "handled" and checklist["G"]["verdict"] == "handled"
    assert "top-coded at 90" in checklist["C"]["treatment"]
    assert checklist["Q"]["verdict"] == "not present"
    assert raw_identifier_leaks(elderly, out, policy) == []


def test_zip3_restricted_prefixes() -> None:
    values = pd.Series([f"{prefix}45" for prefix in sorted(RESTRICTED_ZIP3)] + ["02139", "abc"])
    assert (zip3(values).iloc[: len(RESTRICTED_ZIP3)] == "000").all()
    assert list(zip3(values).iloc[-2:]) == ["021", "000"]


def test_leak_detector_catches_a_surviving_identifier(raw: pd.DataFrame) -> None:
    policy = load_policy(GDPR_POLICY).policy
    out, _ = deidentify(raw, policy, KEY, "test")
    out["notes"] = raw["email"]
    assert raw_identifier_leaks(raw, out, policy) == ["email"]


@pytest.mark.parametrize("value", ["", "short"])
def test_missing_or_weak_key_is_refused(value: str) -> None:
    with pytest.raises(PPMLError, match=r"environment: field 'PPML_HMAC_KEY'.*fix: export PPML_HMAC_KEY"):
        hmac_key_from_env({"PPML_HMAC_KEY": value})
