"""The repeated-subject variant of the bundled landing zone (issue 10, item 1): people with 1-20 records spread
over time, collected and de-identified by the real engines, contribution-bounded per window and trained at the
subject level through the per-subject filter."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from ppml.collection import LandingZoneReader, collect_partition
from ppml.deidentification import deidentify
from ppml.landing_zone import DEFAULT_FIRST_DAY, LANDING_COLUMNS, write_landing_zone
from ppml.landing_zone_repeated import plan_repeated_subjects, synthesize_repeated_subject_records
from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.policy import load_policy
from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig
from ppml.training.contribution import bound_contributions
from ppml.training.subject_budget import train_subjects_within_budget
from tests.support import GDPR_POLICY

KEY = b"k" * 32


def test_the_variant_has_people_with_one_to_twenty_records_on_distinct_days() -> None:
    plan = plan_repeated_subjects(48842, seed=20260101, days=120)
    counts = np.bincount(plan.subjects)
    assert counts.min() == 1 and counts.max() == 20 and 2.5 < counts.mean() < 4.5
    frame = pd.DataFrame({"person": plan.subjects, "day": plan.day_offsets, "row": plan.base_rows})
    assert not frame.duplicated(["person", "day"]).any()  # one visit per person per day
    assert (frame.groupby("person")["row"].nunique() == 1).all()  # a person is one Adult row throughout
    spans = frame.groupby("person")["day"].agg(lambda d: d.max() - d.min())[counts > 5]
    assert spans.median() > 60  # spread over the 120 days, not bunched


@pytest.mark.slow
def test_the_variant_through_collection_bounding_and_subject_level_training(tmp_path) -> None:
    days = [(DEFAULT_FIRST_DAY + timedelta(days=d)).isoformat() for d in range(6)]
    raw = synthesize_repeated_subject_records(only_days=days)
    assert list(raw.columns) == LANDING_COLUMNS
    per_person = raw.groupby("record_id")[["name", "ssn", "date_of_birth", "sex", "age"]].nunique()
    assert (per_person == 1).all().all()  # the same identifiers and attributes in every record of a person
    assert raw["record_id"].value_counts().max() > 1  # people repeat across the window's days
    some = synthesize_repeated_subject_records(only_days=days[:1])  # some days: exactly those days' records
    pd.testing.assert_frame_equal(some, raw[raw["event_date"].isin(days[:1])].reset_index(drop=True))
    write_landing_zone(tmp_path / "landing", raw)
    policy = load_policy(GDPR_POLICY).policy
    reader = LandingZoneReader(tmp_path / "landing")
    window = pd.concat(
        [deidentify(collect_partition(reader, day, policy).records, policy, KEY, day)[0] for day in days],
        ignore_index=True,
    )
    assert not window["record_id"].isin(raw["record_id"]).any()  # pseudonyms, never the raw subject ids
    kept, report = bound_contributions(window, "record_id", 1, seed=0, record_key_columns=["event_date"])
    assert report.subjects_bounded > 0 and report.largest_contribution_after == 1
    assert kept["record_id"].is_unique and report.subjects == window["record_id"].nunique()

    numeric = ["age", "education_num", "hours_per_week", "capital_gain", "capital_loss"]
    X = np.log1p(kept[numeric].to_numpy(dtype=np.float64))
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    y = (kept["income"] == ">50K").to_numpy(dtype=np.int64)
    validation_rows = kept["split_bucket"].to_numpy() >= 80
    train = TabularSplit(X[~validation_rows], y[~validation_rows], tuple(numeric), "repeated/train")
    validation = TabularSplit(X[validation_rows], y[validation_rows], tuple(numeric), "repeated/validation")
    pseudonyms = kept["record_id"].to_numpy()[~validation_rows]
    m = len(set(pseudonyms))
    config = TrainingConfig(
        model=ModelSpec("logistic"), epochs=2, batch_size=-(-m // 5), learning_rate=0.5, optimizer="sgd"
    )
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    result = train_subjects_within_budget(
        train,
        pseudonyms,
        validation,
        [config],
        DPConfig(2.0, 1e-5, accountant="rdp", dp_seed=0),
        ledger=ledger,
        scope=DataScope(policy.dataset.id, tuple(days)),
        lifetime=LifetimeBudget(8.0, 1e-5),
        min_eligible=100,
        record_unit_group_size=1,
        request_key="repeated-window",
    )
    assert result.subjects_trained == m and result.reservation.excluded == 0
    assert result.model.epsilon <= 2.0 * 1.01 and result.model.clipping == "user_level"
    assert result.accounts["subjects"] == m and result.accounts["max_subject_epsilon"] <= 8.0
    assert result.model.evaluate(validation)["auc"] > 0.7
    metadata = result.to_metadata()
    assert not any(str(p) in str(metadata) for p in pseudonyms[:50])  # aggregates only
    ledger.close()
