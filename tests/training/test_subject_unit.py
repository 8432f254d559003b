"""The privacy unit ``subject`` (issue 10, item 1): the policy fields, contribution bounding, user-level DP-SGD
(per-subject clipping, a per-person epsilon that matches Opacus' accountant), and accountable training through the
per-subject filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from opacus.accountants import RDPAccountant

from ppml.errors import PPMLError
from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.ledger.subjects import SubjectAccounts, SubjectsExhaustedError
from ppml.policy import load_policy
from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig
from ppml.training.contribution import bound_contributions, subject_index
from ppml.training.models import build_model
from ppml.training.subject_budget import train_subjects_within_budget
from ppml.training.user_level import _StepKernel, plan_user_level, train_user_level

GDPR_POLICY = Path(__file__).resolve().parents[2] / "policies" / "adult_gdpr.yaml"


def _records(subjects: int = 200, seed: int = 0) -> pd.DataFrame:
    """Subjects with 1-20 records each, spread over days (like the repeated-subject landing zone)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 21, size=subjects)
    rows = [
        {"subject": f"pseudo-{s:04d}", "day": f"2026-01-{1 + int(d):02d}", "value": float(rng.normal())}
        for s, count in enumerate(counts)
        for d in rng.choice(28, size=count, replace=count > 28)
    ]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------- policy


def _policy_variant(tmp_path: Path, **privacy: object) -> Path:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["privacy"].update(privacy)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_the_policy_chooses_the_privacy_unit_and_refuses_a_bound_below_one_record(tmp_path: Path) -> None:
    assert load_policy(GDPR_POLICY).policy.privacy.privacy_unit == "record"  # existing policies unchanged
    subject = load_policy(
        _policy_variant(tmp_path, privacy_unit="subject", max_records_per_subject=4), check_files=False
    )
    assert (subject.policy.privacy.privacy_unit, subject.policy.privacy.max_records_per_subject) == ("subject", 4)
    for bad, field in (
        ({"max_records_per_subject": 0}, "privacy.max_records_per_subject"),
        ({"privacy_unit": "row"}, "privacy.privacy_unit"),
    ):
        with pytest.raises(PPMLError, match=field) as caught:
            load_policy(_policy_variant(tmp_path, **bad), check_files=False)
        assert "\n" not in str(caught.value) and "fix:" in str(caught.value)


@pytest.mark.parametrize(
    ("subject_id", "field"),
    [(None, "schema.subject_id"), ("", "schema"), ("no_such_column", "schema")],
    ids=["missing", "empty", "not a declared column"],
)
def test_a_subject_unit_policy_without_a_usable_subject_id_is_refused_in_one_line(
    tmp_path: Path, subject_id: str | None, field: str
) -> None:
    path = _policy_variant(tmp_path, privacy_unit="subject", max_records_per_subject=2)
    document = yaml.safe_load(path.read_text())
    if subject_id is None:
        del document["schema"]["subject_id"]
    else:
        document["schema"]["subject_id"] = subject_id
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(PPMLError) as caught:
        load_policy(path, check_files=False)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and f"field '{field}" in message and "fix:" in message


# ------------------------------------------------------------------------------------------ contribution bounding


def test_contribution_bounding_keeps_at_most_c_records_reproducibly() -> None:
    frame = _records()
    kept, report = bound_contributions(frame, "subject", 4, seed=7)
    per_subject = kept["subject"].value_counts()
    original = frame["subject"].value_counts()
    assert per_subject.max() <= 4
    assert (per_subject == original.clip(upper=4).reindex(per_subject.index)).all()  # subjects with <= c keep all
    assert set(per_subject.index) == set(original.index)  # nobody disappears
    assert report.records_before == len(frame) and report.records_after == len(kept)
    assert report.records_dropped == int((original - 4).clip(lower=0).sum())
    assert report.subjects_bounded == int((original > 4).sum()) and report.largest_contribution_after == 4
    shuffled = frame.sample(frac=1.0, random_state=3)
    again, _ = bound_contributions(shuffled, "subject", 4, seed=7)
    assert sorted(map(tuple, again.to_numpy())) == sorted(map(tuple, kept.to_numpy()))  # order does not matter
    other, _ = bound_contributions(frame, "subject", 4, seed=8)
    assert sorted(map(tuple, other.to_numpy())) != sorted(map(tuple, kept.to_numpy()))  # the seed does


@pytest.mark.parametrize(
    ("frame", "column", "c", "field"),
    [
        (pd.DataFrame({"x": [1, 2]}), "subject", 2, "schema.subject_id"),
        (pd.DataFrame({"subject": [None, ""], "x": [1, 2]}), "subject", 2, "subject"),
        (pd.DataFrame({"subject": ["a", " "], "x": [1, 2]}), "subject", 2, "subject"),
        (pd.DataFrame({"subject": ["a", "b"], "x": [1, 2]}), "subject", 0, "privacy.max_records_per_subject"),
    ],
    ids=["missing column", "empty column", "an empty id", "c below 1"],
)
def test_contribution_bounding_refuses_bad_input_in_one_line(frame, column, c, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PPMLError, match=field) as caught:
        bound_contributions(frame, column, c)
    assert "\n" not in str(caught.value) and "fix:" in str(caught.value)


# ------------------------------------------------------------------------------------------ user-level DP-SGD


def test_a_subject_with_many_records_moves_the_sum_by_at_most_the_clipping_bound() -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec("logistic"), 3)
    kernel = _StepKernel(model, clip=1.0, sigma=0.0, physical=4)  # no noise: the clipped sum itself
    X = torch.full((10, 3), 5.0)
    y = torch.zeros(10, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    kernel.run(X, y, torch.zeros(10, dtype=torch.long), generator, expected=1.0)
    one_subject = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert one_subject == pytest.approx(1.0, rel=1e-4)  # ten records, one person: one clipping bound, not ten
    kernel.run(X, y, torch.arange(10), generator, expected=1.0)
    ten_subjects = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert ten_subjects == pytest.approx(10.0, rel=1e-3)  # ten people: each moves it by up to the bound


#: Both training tests share one calibration (cached per process): q = 1/5, 2 epochs, epsilon 2 (RDP accountant).
DP = DPConfig(2.0, 1e-5, accountant="rdp", dp_seed=0)


def _config(batch_size: int) -> TrainingConfig:
    return TrainingConfig(
        model=ModelSpec("logistic"), epochs=2, batch_size=batch_size, learning_rate=0.2, optimizer="sgd"
    )


def test_user_level_training_learns_and_its_per_person_epsilon_is_the_accountants() -> None:
    kept, _ = bound_contributions(_records(subjects=140, seed=1), "subject", 3, seed=0)
    rng = np.random.default_rng(0)
    weights = rng.normal(size=6)
    X = rng.normal(size=(len(kept) + 200, 6)).astype(np.float32)
    y = (X @ weights > 0).astype(np.int64)
    train = TabularSplit(X[:-200], y[:-200], name="subjects/train")
    validation = TabularSplit(X[-200:], y[-200:], name="subjects/validation")
    codes, m = subject_index(kept["subject"].to_numpy())
    charges: list[tuple[str, int]] = []

    class Sink:
        def before_steps(self, *, steps: int, epsilon: float) -> None:
            charges.append(("before", steps))

        def after_steps(self, *, steps: int, epsilon: float) -> None:
            charges.append(("after", steps))

    model = train_user_level(train, codes, _config(28), DP, validation=validation, spend_sink=Sink())
    plan = plan_user_level(m, _config(28), DP)
    assert m == 140 and plan.sample_rate == pytest.approx(0.2) and model.steps == plan.planned_steps == 10
    independent = RDPAccountant()
    independent.history = [(model.noise_multiplier, model.sample_rate, model.steps)]
    assert model.epsilon == pytest.approx(independent.get_epsilon(delta=1e-5), rel=1e-6)
    assert model.epsilon <= DP.target_epsilon * 1.01 and model.clipping == "user_level"
    assert charges == [("before", 5), ("after", 5), ("before", 10), ("after", 10)]  # pre-charged per epoch
    assert model.evaluate(validation)["accuracy"] > 0.7


def test_accountable_subject_training_excludes_exhausted_subjects_then_refuses(tmp_path: Path) -> None:
    frame = _records(subjects=150, seed=2)
    kept, _ = bound_contributions(frame, "subject", 2, seed=0)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(len(kept), 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    train, validation = TabularSplit(X, y, name="subjects/train"), TabularSplit(X[:80], y[:80], name="v")
    names = kept["subject"].to_numpy()
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    scope = DataScope("people", ("2026-01-01",))
    lifetime = LifetimeBudget(4.0, 1e-5)
    config, dp = _config(30), DP  # 150 subjects: q = 1/5, the same calibration as above
    common = dict(ledger=ledger, scope=scope, lifetime=lifetime, record_unit_group_size=2)
    first = train_subjects_within_budget(
        train, names, validation, [config], dp, min_eligible=50, request_key="w1", **common
    )
    assert first.reservation.excluded == 0 and first.subjects_trained == 150
    assert ledger.run(first.ledger_run_id).status == "completed"
    half = np.isin(names, sorted(set(names))[:75])  # next window: 75 old subjects and 75 new ones
    newcomers = np.array([f"new-{n}" for n in names[~half]])
    second_names = np.concatenate([names[half], newcomers])
    order = np.concatenate([np.flatnonzero(half), np.flatnonzero(~half)])
    second_train = train.subset(order)
    outcomes = []
    for week in range(2, 12):
        try:
            result = train_subjects_within_budget(
                second_train, second_names, validation, [config], dp, min_eligible=50, request_key=f"w{week}", **common
            )
        except SubjectsExhaustedError as refusal:
            outcomes.append(("refused", refusal.eligible))
            break
        outcomes.append(("trained", result.reservation.excluded))
        assert result.records_trained == int(np.isin(second_names, result.reservation.eligible).sum())
    assert ("trained", 75) in outcomes  # the old subjects ran out first and were excluded, the run trained
    assert outcomes[-1][0] == "refused" and outcomes[-1][1] < 50
    epsilons = SubjectAccounts(ledger).subject_epsilons(
        "people", lifetime, [*names, *newcomers], record_unit_group_size=2
    )
    assert max(epsilons.values()) <= lifetime.epsilon + 1e-9
    ledger.close()
