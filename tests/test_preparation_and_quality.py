"""Preparation (risk-limiting feature selection, encoding, split) and the GX suites that guard the data."""

import numpy as np
import pandas as pd
import pytest

from ppml.deidentification import SPLIT_BUCKET_COLUMN, deidentify
from ppml.errors import PPMLError
from ppml.expectations import anonymized_records_suite, cleaned_records_suite, raw_records_suite
from ppml.landing_zone import synthesize_records
from ppml.policy import load_policy
from ppml.preparation import (
    LABEL_COLUMN,
    SPLIT_COLUMN,
    SplitRatios,
    apply_bins,
    clean_records,
    encode_features,
    quantile_bins,
    share_in_small_groups,
)
from tests.support import GDPR_POLICY, TEST_FIRST_DAY, days


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy(GDPR_POLICY).policy


@pytest.fixture(scope="module")
def released() -> pd.DataFrame:
    """A week of records, de-identified and anonymized by the engine as the graph does."""
    from ppml.anonymization import anonymize
    from ppml.anonymization.policy_config import config_from_policy
    from ppml_assets.anonymization import with_missing_values

    loaded = load_policy(GDPR_POLICY)
    raw = synthesize_records(only_days=days(TEST_FIRST_DAY, 7))
    out, _ = deidentify(raw, loaded.policy, b"k" * 32, "test")
    out = out.drop(columns=["record_id", "event_date"])
    config = with_missing_values(config_from_policy(loaded), out, "?")
    return anonymize(out, config).data


def test_features_are_admitted_only_while_risk_stays_bounded(released: pd.DataFrame, policy) -> None:  # type: ignore[no-untyped-def]
    cleaned, report = clean_records(released, policy, max_share_below_k=0.05)
    decisions = {d.feature: d for d in report.decisions}
    assert decisions["fnlwgt"].decision == "dropped" or decisions["fnlwgt"].bins is not None
    assert decisions["occupation"].decision == "sensitive"
    assert decisions["age"].decision == "quasi-identifier"
    admitted = [d.feature for d in report.decisions if d.decision != "dropped"]
    known_to_attacker = [c for c in admitted if c not in policy.schema_.sensitive_attributes]
    assert share_in_small_groups(cleaned, known_to_attacker, policy.privacy.k) <= 0.05 + 1e-12
    assert report.share_below_k <= 0.05 + 1e-12
    assert set(cleaned.columns) == {*admitted, LABEL_COLUMN, SPLIT_COLUMN}
    assert set(cleaned[LABEL_COLUMN]) <= {0, 1}


def test_a_looser_limit_admits_more(released: pd.DataFrame, policy) -> None:  # type: ignore[no-untyped-def]
    _, strict = clean_records(released, policy, max_share_below_k=0.0)
    _, loose = clean_records(released, policy, max_share_below_k=1.0)
    assert len(strict.selected) < len(loose.selected)
    assert all(d.decision != "dropped" for d in loose.decisions)


def test_split_is_stable_per_subject_and_follows_the_ratios() -> None:
    buckets = pd.Series(np.arange(100).repeat(10))
    split = SplitRatios(70, 15).assign(buckets)
    assert (split[buckets < 70] == "train").all() and (split[buckets >= 85] == "test").all()
    assert split.value_counts(normalize=True).round(2).to_dict() == {"train": 0.7, "validation": 0.15, "test": 0.15}


def test_bins_and_encoding(released: pd.DataFrame) -> None:
    labels, edges = quantile_bins(released["capital_gain"], 5)
    assert edges[0] == 0.0  # zero-inflated: zero keeps its own bin
    assert (apply_bins(released["capital_gain"], edges) == labels).all()
    frame = pd.DataFrame(
        {
            "sex": ["Male", "Female", "Male"],
            "hours": [10, 40, 60],
            LABEL_COLUMN: [0, 1, 1],
            SPLIT_COLUMN: ["train", "train", "test"],
        }
    )
    matrix = encode_features(frame, ["sex"], ["hours"])
    assert matrix.feature_names == ["sex=Female", "sex=Male", "hours"]
    X, y = matrix.split("train")
    assert X.dtype == np.float32 and X.shape == (2, 3) and list(y) == [0, 1]
    assert abs(X[:, 2].mean()) < 1e-6  # standardized with train statistics


def test_missing_split_bucket_is_a_clear_error(released: pd.DataFrame, policy) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PPMLError, match=f"field '{SPLIT_BUCKET_COLUMN}': missing"):
        clean_records(released.drop(columns=[SPLIT_BUCKET_COLUMN]), policy)


def test_raw_suite_catches_out_of_range_and_missing_values(policy) -> None:  # type: ignore[no-untyped-def]
    raw = synthesize_records(only_days=[TEST_FIRST_DAY])
    from ppml.collection import validate_and_type

    typed = validate_and_type(raw.astype(str), "test", policy, TEST_FIRST_DAY)
    assert raw_records_suite(policy, typed).success
    broken = typed.copy()
    broken.loc[0, "age"] = 150
    broken.loc[1, "occupation"] = ""
    outcome = raw_records_suite(policy, broken)
    failed = {(r["expectation"], r["column"]) for r in outcome.failures}
    assert ("expect_column_values_to_be_between", "age") in failed
    assert ("expect_column_values_to_not_be_null", "occupation") in failed
    # aggregates only: GX's sample of unexpected values (personal data) is never returned
    assert all("partial_unexpected_list" not in r for r in outcome.results)


def test_anonymized_suite_catches_an_identifier_column_and_small_classes(released: pd.DataFrame, policy) -> None:  # type: ignore[no-untyped-def]
    columns = list(released.columns)
    coarse = released.assign(
        race="any", marital_status="any", workclass="any", sex="any", age="any", native_country="any", education="any"
    )
    assert anonymized_records_suite(policy, coarse, columns, input_rows=len(coarse)).success
    leaked = coarse.assign(ssn="123-45-6789")
    failures = {r["expectation"] for r in anonymized_records_suite(policy, leaked, columns, len(coarse)).failures}
    assert "expect_table_columns_to_match_set" in failures
    small = coarse.copy()
    small.loc[small.index[:2], "age"] = "rare"
    failures = {r["expectation"] for r in anonymized_records_suite(policy, small, columns, len(coarse)).failures}
    assert "expect_column_values_to_be_between" in failures
    too_few = coarse.iloc[: int(len(coarse) * 0.9)]
    failures = {r["expectation"] for r in anonymized_records_suite(policy, too_few, columns, len(coarse)).failures}
    assert "expect_table_row_count_to_be_between" in failures  # more than the 5% suppression limit removed


def test_cleaned_suite(released: pd.DataFrame, policy) -> None:  # type: ignore[no-untyped-def]
    cleaned, _ = clean_records(released, policy)
    expected = list(cleaned.columns)
    assert cleaned_records_suite(cleaned, expected, LABEL_COLUMN, SPLIT_COLUMN).success
    assert not cleaned_records_suite(cleaned.assign(name="x"), expected, LABEL_COLUMN, SPLIT_COLUMN).success
