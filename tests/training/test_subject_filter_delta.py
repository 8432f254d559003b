"""The per-subject filter when the run's delta changes (``delta: auto`` follows the number of people) and on a
ledger written by the previous version (0003): the filter's Renyi budget never grows, every figure is stated at
the filter's delta or a smaller one (an over-count, never an under-count), and old cohorts keep counting."""

from __future__ import annotations

import math
from importlib import resources

import pytest
import sqlalchemy as sa
from opacus.accountants.analysis import rdp as rdp_analysis

from ppml.ledger import DataScope, LifetimeBudget, PlannedRun, PrivacyLedger
from ppml.ledger.composition import Charge, compose
from ppml.ledger.schema import VERSION_TABLE
from ppml.ledger.subjects import SubjectAccounts, SubjectsExhaustedError, subject_key

SIGMA, RATE, STEPS = 1.2, 0.02, 200
SCOPE = DataScope("weekly-people", ("2026-01-01",))


def _planned() -> PlannedRun:
    return PlannedRun(0, "fp", {"test": True}, "rdp", 1.0, 1e-5, SIGMA, SIGMA, RATE, STEPS, 1.0)


def _epsilon(order: float, rdp: float, delta: float) -> float:
    """Independent of the ledger: RDP -> (epsilon, delta) at one order (Balle et al. 2020, Thm. 21)."""
    return rdp + math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)


def _run_rdp(order: float) -> float:
    return float(rdp_analysis.compute_rdp(q=RATE, noise_multiplier=SIGMA, steps=STEPS, orders=[order])[0])


def test_a_larger_delta_never_widens_the_filter_and_a_smaller_one_is_used(tmp_path) -> None:
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    accounts = SubjectAccounts(ledger)
    first = LifetimeBudget(3.0, 1e-5)
    larger = LifetimeBudget(3.0, 1e-3)  # fewer people this week: delta: auto gives a larger delta
    reserve = accounts.reserve(
        SCOPE, [_planned()], first, ["a"], min_eligible=1, request_key="0", record_unit_group_size=1
    )
    order, included = reserve.filter_order, 1
    while True:  # only "a": keep asking at the larger delta until the filter excludes it
        try:
            accounts.reserve(
                SCOPE, [_planned()], larger, ["a"], min_eligible=1, request_key=f"{included}", record_unit_group_size=1
            )
        except SubjectsExhaustedError:
            break
        included += 1
    fits_first = max(k for k in range(1, 200) if _epsilon(order, k * _run_rdp(order), 1e-5) <= 3.0)
    fits_larger = max(k for k in range(1, 200) if _epsilon(order, k * _run_rdp(order), 1e-3) <= 3.0)
    assert fits_larger > fits_first  # the larger delta would have admitted more runs ...
    assert included == fits_first  # ... but the filter kept the delta of its first reservation
    summary = accounts.summary(SCOPE.dataset, larger, record_unit_group_size=1)
    assert summary["lifetime_delta"] == 1e-5  # never stated at a larger delta than the filter's
    assert summary["max_subject_epsilon"] == pytest.approx(_epsilon(order, included * _run_rdp(order), 1e-5))
    assert summary["max_subject_epsilon"] <= 3.0
    smaller = accounts.summary(SCOPE.dataset, LifetimeBudget(3.0, 1e-7), record_unit_group_size=1)
    assert smaller["lifetime_delta"] == 1e-7 and smaller["max_subject_epsilon"] > summary["max_subject_epsilon"]
    # the data-set ledger recomposes every charge at the delta asked: runs of different deltas never use basic
    # composition beyond the lifetime delta (sum of deltas 2e-5 > 1e-5)
    two = compose([Charge(SIGMA, RATE, STEPS, 1.0, 1e-5), Charge(SIGMA, RATE, STEPS, 1.0, 1e-6)], 1e-5)
    assert two.method != "basic" and two.epsilon > 1.0
    ledger.close()


def test_a_0003_ledger_with_subject_accounts_is_migrated_and_its_cohorts_keep_counting(tmp_path) -> None:
    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(resources.files("ppml.ledger") / "migrations"))
    config.set_main_option("version_table", VERSION_TABLE)
    old_cohort = "c" * 64  # what 0003 wrote: a cohort keyed by its history's hash, one subject-unit run in it
    stamp = "'2026-01-01 00:00:00'"
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0003_subject_accounts")
        for statement in (
            "INSERT INTO ppml_ledger_datasets (dataset, partitions_disjoint, created_at, scope_kind, filter_order) "
            f"VALUES ('weekly-people', 0, {stamp}, 'dataset_id', 8.0)",
            "INSERT INTO ppml_ledger_runs (id, dataset, partitions, record_set_hash, candidate_index, "
            "config_fingerprint, config, kind, status, noise_multiplier_applied, sample_rate, target_delta, "
            "planned_steps, steps_charged, steps_completed, epsilon_charged, created_at, updated_at, privacy_unit) "
            f"VALUES ('old-run', 'weekly-people', '[]', '', 0, 'fp', '{{}}', 'dp', 'completed', {SIGMA}, {RATE}, "
            f"1e-5, {STEPS}, {STEPS}, {STEPS}, 1.0, {stamp}, {stamp}, 'subject')",
            "INSERT INTO ppml_ledger_subject_cohorts (dataset, cohort, runs, subjects, created_at, updated_at) "
            f"VALUES ('weekly-people', '{old_cohort}', '[\"old-run\"]', 2, {stamp}, {stamp})",
        ):
            connection.execute(sa.text(statement))
        for person in ("old-1", "old-2"):
            connection.execute(
                sa.text(f"INSERT INTO ppml_ledger_subjects VALUES ('weekly-people', :k, '{old_cohort}', {stamp})"),
                {"k": subject_key("weekly-people", person)},
            )
    engine.dispose()
    ledger = PrivacyLedger(url)  # migrates 0003 -> head
    with ledger.engine.connect() as connection:
        assert (
            connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one() == "0004_filter_delta"
        )
    accounts = SubjectAccounts(ledger)
    lifetime = LifetimeBudget(3.0, 1e-5)
    reservation = accounts.reserve(  # one old subject and a new one: the old cohort splits, the new one joins
        SCOPE, [_planned()], lifetime, ["old-1", "new"], min_eligible=1, request_key="r", record_unit_group_size=1
    )
    assert reservation.filter_order == 8.0  # the order 0003 fixed stays
    epsilons = accounts.subject_epsilons(SCOPE.dataset, lifetime, ["old-1", "old-2", "new"], record_unit_group_size=1)
    assert epsilons["old-1"] == pytest.approx(_epsilon(8.0, 2 * _run_rdp(8.0), 1e-5))  # old run + this one
    assert epsilons["old-2"] == pytest.approx(_epsilon(8.0, _run_rdp(8.0), 1e-5))  # the old run only
    assert epsilons["new"] == pytest.approx(_epsilon(8.0, _run_rdp(8.0), 1e-5))
    assert sorted(c["subjects"] for c in accounts.cohorts(SCOPE.dataset)) == [1, 1, 1]
    with ledger.engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT filter_delta FROM ppml_ledger_datasets")).scalar_one()
    assert stored == 1e-5  # fixed at the first reservation after the upgrade
    ledger.close()
