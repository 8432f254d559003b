"""Per-subject accounting with an individual privacy filter (issue 10, item 2): the filter excludes exhausted
subjects, every subject's epsilon matches an independent recomputation, crashes never under-count, an old ledger
is migrated, and concurrent reservations on PostgreSQL never let a subject pass the budget."""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import pytest
import sqlalchemy as sa
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

from ppml.errors import PPMLError
from ppml.ledger import DataScope, LifetimeBudget, PlannedRun, PrivacyLedger
from ppml.ledger.schema import VERSION_TABLE
from ppml.ledger.subjects import (
    SubjectAccounts,
    SubjectsExhaustedError,
    epsilon_at_order,
    filter_order,
    subject_key,
)

LIFETIME = LifetimeBudget(3.0, 1e-5)
SIGMA, RATE, STEPS = 1.5, 0.02, 200
SCOPE = DataScope("clinic-people", ("2026-01-01",))


def _planned(index: int = 0, sigma: float = SIGMA, steps: int = STEPS) -> PlannedRun:
    return PlannedRun(index, f"fp{index}", {"test": True}, "rdp", 1.0, 1e-5, sigma, sigma, RATE, steps, 1.0)


@functools.cache
def _own_rdp(order: float, runs: int, sigma: float = SIGMA, steps: int = STEPS) -> float:
    """Independent of the ledger: Opacus' RDP of the subsampled Gaussian over all steps, ``runs`` times."""
    return runs * float(rdp_analysis.compute_rdp(q=RATE, noise_multiplier=sigma, steps=steps, orders=[order])[0])


@functools.cache
def _tight_epsilon(runs: int) -> float:
    """Opacus' RDP accountant over all its orders (the tightest RDP bound of the same history)."""
    accountant = RDPAccountant()
    accountant.history = [(SIGMA, RATE, STEPS * runs)]
    return accountant.get_epsilon(delta=1e-5)


def _own_epsilon(order: float, rdp: float, delta: float) -> float:
    if rdp == 0:
        return 0.0
    return rdp + math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)


def _ledger(tmp_path, name: str = "ledger.db") -> PrivacyLedger:
    return PrivacyLedger(f"sqlite:///{tmp_path / name}")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_filter_excludes_exhausted_subjects_and_matches_an_independent_recomputation(
    tmp_path, request, backend
) -> None:  # type: ignore[no-untyped-def]
    # both back ends: PostgreSQL loads the request with COPY, SQLite with executemany (ppml.ledger.subject_moves)
    ledger = _ledger(tmp_path) if backend == "sqlite" else PrivacyLedger(request.getfixturevalue("postgres_database"))
    accounts = SubjectAccounts(ledger)
    people = [f"pseudonym-{i:03d}" for i in range(80)]
    included: dict[str, int] = dict.fromkeys(people, 0)
    histories: dict[str, tuple[str, ...]] = dict.fromkeys(people, ())
    order = None
    excluded_seen = 0
    for week in range(14):  # sliding windows: the middle subjects are in every run, the edges in few
        window = people[week * 3 : week * 3 + 40]
        reservation = accounts.reserve(
            SCOPE, [_planned()], LIFETIME, window, min_eligible=5, request_key=f"w{week}", record_unit_group_size=1
        )
        order = reservation.filter_order
        limit = LIFETIME.epsilon
        expected = [p for p in window if _own_epsilon(order, _own_rdp(order, included[p] + 1), 1e-5) <= limit]
        assert list(reservation.eligible) == expected  # the filter admits exactly who fits, independently computed
        assert reservation.excluded == len(window) - len(expected)
        excluded_seen += reservation.excluded
        for person in reservation.eligible:
            included[person] += 1
            histories[person] += reservation.run_ids
        ledger.complete_run(reservation.run_ids[0], steps=STEPS, epsilon=1.0)
    assert excluded_seen > 0  # the middle subjects ran out and were excluded, the run still trained
    epsilons = accounts.subject_epsilons(SCOPE.dataset, LIFETIME, people, record_unit_group_size=1)
    for person in people:
        own = _own_epsilon(order, _own_rdp(order, included[person]), 1e-5)
        assert epsilons[person] == pytest.approx(own, rel=1e-9, abs=1e-12)
        assert epsilons[person] <= LIFETIME.epsilon + 1e-9  # nobody passes the budget
        if included[person]:  # the filter's fixed-order bound is never below the tightest accountant
            tight = RDPAccountant()
            tight.history = [(SIGMA, RATE, STEPS * included[person])]
            assert epsilons[person] >= tight.get_epsilon(delta=1e-5) - 1e-9
    most = max(included, key=included.__getitem__)  # the filter's fixed-order bound never undercuts the tightest
    assert epsilons[most] >= _tight_epsilon(included[most]) - 1e-9
    summary = accounts.summary(SCOPE.dataset, LIFETIME, record_unit_group_size=1)
    assert summary["subjects"] == sum(1 for n in included.values() if n)
    assert summary["max_subject_epsilon"] == pytest.approx(max(epsilons.values()))
    assert summary["cohorts"] == len(set(histories.values()) - {()})  # one cohort per distinct history
    assert sum(c["subjects"] for c in accounts.cohorts(SCOPE.dataset)) == summary["subjects"]
    with ledger.engine.connect() as connection:  # subjects are stored hashed, never by pseudonym
        stored = set(connection.execute(sa.text("SELECT subject FROM ppml_ledger_subjects")).scalars())
    assert subject_key(SCOPE.dataset, people[0]) in stored and people[0] not in stored


def test_refused_when_too_few_subjects_remain_and_nothing_moves(tmp_path) -> None:
    ledger = _ledger(tmp_path)
    accounts = SubjectAccounts(ledger)
    people = [f"p{i}" for i in range(10)]
    for week in range(20):
        try:
            reservation = accounts.reserve(
                SCOPE, [_planned()], LIFETIME, people, min_eligible=5, request_key=f"w{week}", record_unit_group_size=1
            )
        except SubjectsExhaustedError as refusal:
            assert refusal.eligible == 0 and refusal.excluded == 10 and refusal.required == 5
            assert "privacy.min_eligible_subjects" in str(refusal) and "\n" not in str(refusal)
            break
        ledger.complete_run(reservation.run_ids[0], steps=STEPS, epsilon=1.0)
    else:
        pytest.fail("the filter never exhausted the subjects")
    before = accounts.subject_epsilons(SCOPE.dataset, LIFETIME, people, record_unit_group_size=1)
    assert [r.status for r in ledger.runs(SCOPE.dataset)][-1] == "refused"
    assert accounts.subject_epsilons(SCOPE.dataset, LIFETIME, people, record_unit_group_size=1) == before
    newcomers = [f"new{i}" for i in range(6)]  # fresh subjects still have budget: the next run trains on them
    reservation = accounts.reserve(
        SCOPE, [_planned()], LIFETIME, people + newcomers, min_eligible=5, request_key="n", record_unit_group_size=1
    )
    assert list(reservation.eligible) == newcomers and reservation.excluded == 10


def test_a_crashed_run_keeps_its_charge_and_a_running_one_counts_in_full(tmp_path) -> None:
    ledger = _ledger(tmp_path)
    accounts = SubjectAccounts(ledger)
    people = ["a", "b", "c"]
    reservation = accounts.reserve(
        SCOPE, [_planned()], LIFETIME, people, min_eligible=1, request_key="r", record_unit_group_size=1
    )
    order = reservation.filter_order
    running = accounts.subject_epsilons(SCOPE.dataset, LIFETIME, people, record_unit_group_size=1)
    assert running["a"] == pytest.approx(_own_epsilon(order, _own_rdp(order, 1), 1e-5))  # full plan while running
    ledger.pre_charge(reservation.run_ids[0], steps=50, epsilon=0.4)
    ledger.fail_run(reservation.run_ids[0], "killed")
    crashed = accounts.subject_epsilons(SCOPE.dataset, LIFETIME, people, record_unit_group_size=1)
    assert crashed["a"] == pytest.approx(_own_epsilon(order, _own_rdp(order, 1, steps=50), 1e-5))
    assert crashed["a"] > 0  # what may have run stays charged


def test_record_unit_runs_count_for_every_subject_as_a_group(tmp_path) -> None:
    ledger = _ledger(tmp_path)
    accounts = SubjectAccounts(ledger)
    record_run = ledger.reserve(SCOPE, [_planned(sigma=20.0, steps=10)], LIFETIME, request_key="record")
    ledger.complete_run(record_run.run_ids[0], steps=10, epsilon=0.2)
    order = accounts.reserve(
        SCOPE, [_planned()], LIFETIME, ["x"], min_eligible=1, request_key="s", record_unit_group_size=3
    ).filter_order
    epsilons = accounts.subject_epsilons(SCOPE.dataset, LIFETIME, ["x", "never-seen"], record_unit_group_size=3)
    group = 10 * order * 9 / (2 * 20.0**2)  # Gaussian of sensitivity 3, no amplification: alpha g^2 / (2 sigma^2)
    assert epsilons["never-seen"] == pytest.approx(_own_epsilon(order, group, 1e-5), rel=1e-6)
    assert epsilons["x"] == pytest.approx(_own_epsilon(order, group + _own_rdp(order, 1), 1e-5), rel=1e-6)


def test_bad_inputs_are_refused_in_one_line(tmp_path) -> None:
    accounts = SubjectAccounts(_ledger(tmp_path))
    cases = [
        ({"min_eligible": 0, "record_unit_group_size": 1}, ["a"], "min_eligible_subjects"),
        ({"min_eligible": 1, "record_unit_group_size": 0}, ["a"], "record_unit_group_size"),
        ({"min_eligible": 1, "record_unit_group_size": 1}, ["a", ""], "schema.subject_id"),
        ({"min_eligible": 1, "record_unit_group_size": 1}, ["a", " \t "], "schema.subject_id"),
        ({"min_eligible": 1, "record_unit_group_size": 1}, ["a", None, "b"], "schema.subject_id"),
        ({"min_eligible": 1, "record_unit_group_size": 1}, ["a\nb", "  "], "schema.subject_id"),
    ]
    for kwargs, people, field in cases:
        with pytest.raises(PPMLError, match=field) as caught:
            accounts.reserve(SCOPE, [_planned()], LIFETIME, people, request_key="bad", **kwargs)
        assert "\n" not in str(caught.value) and "fix:" in str(caught.value)
    assert accounts.ledger.runs(SCOPE.dataset) == []  # nothing reserved on bad input


#: pseudonyms with COPY's special characters, non-ASCII text, a number and a repeat: each must reach the same key
ODD_PEOPLE = ["plain", "tab\there", "back\\slash", "new\nline", "cr\rhere", "\u00e9l\u00e8ve-\u4e2d", 42, "plain"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_every_pseudonym_reaches_the_same_subject_key_on_either_database(tmp_path, request, backend) -> None:
    """PostgreSQL hashes the pseudonyms itself (one COPY, sha256 in the server); SQLite's keys are hashed in
    Python: both must store exactly ``subject_key`` of each distinct pseudonym, and exclude by pseudonym."""
    ledger = _ledger(tmp_path) if backend == "sqlite" else PrivacyLedger(request.getfixturevalue("postgres_database"))
    accounts = SubjectAccounts(ledger)
    try:
        reservation = accounts.reserve(
            SCOPE, [_planned()], LIFETIME, ODD_PEOPLE, min_eligible=1, request_key="odd", record_unit_group_size=1
        )
        distinct = list(dict.fromkeys(str(p) for p in ODD_PEOPLE))
        assert list(reservation.eligible) == distinct
        with ledger.engine.connect() as connection:
            stored = set(connection.execute(sa.text("SELECT subject FROM ppml_ledger_subjects")).scalars())
        assert stored == {subject_key(SCOPE.dataset, p) for p in distinct}
        epsilons = accounts.subject_epsilons(SCOPE.dataset, LIFETIME, distinct, record_unit_group_size=1)
        assert len(set(epsilons.values())) == 1 and min(epsilons.values()) > 0  # one cohort, charged
    finally:
        ledger.close()


def test_a_ledger_of_the_previous_version_is_migrated_and_keeps_its_runs(tmp_path) -> None:
    from importlib import resources

    from alembic import command
    from alembic.config import Config

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    config = Config()
    config.set_main_option("script_location", str(resources.files("ppml.ledger") / "migrations"))
    config.set_main_option("version_table", VERSION_TABLE)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0002_dataset_identity")
        connection.execute(
            sa.text(
                "INSERT INTO ppml_ledger_datasets (dataset, partitions_disjoint, created_at, scope_kind) "
                "VALUES ('clinic-people', 0, '2026-01-01 00:00:00', 'dataset_id')"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO ppml_ledger_runs (id, dataset, partitions, record_set_hash, candidate_index, "
                "config_fingerprint, config, kind, status, noise_multiplier_applied, sample_rate, target_delta, "
                "planned_steps, steps_charged, steps_completed, epsilon_charged, created_at, updated_at) VALUES "
                "('old-run', 'clinic-people', '[]', '', 0, 'fp', '{}', 'dp', 'completed', 20.0, 0.02, 1e-5, "
                "10, 10, 10, 0.2, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            )
        )
    engine.dispose()
    ledger = PrivacyLedger(url)  # migrates 0002 -> head
    with ledger.engine.connect() as connection:
        version = connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
        assert version == "0004_filter_delta"
        assert set(sa.inspect(connection).get_table_names()) >= {"ppml_ledger_subjects", "ppml_ledger_subject_cohorts"}
    [old] = ledger.runs("clinic-people")
    assert old.id == "old-run" and old.privacy_unit is None  # a record-unit run, still charged
    accounts = SubjectAccounts(ledger)
    reservation = accounts.reserve(
        SCOPE, [_planned()], LIFETIME, ["y"], min_eligible=1, request_key="s", record_unit_group_size=2
    )
    order = reservation.filter_order
    group = 10 * order * 4 / (2 * 20.0**2)
    assert reservation.max_epsilon_before == pytest.approx(_own_epsilon(order, group, 1e-5), rel=1e-6)


@pytest.mark.postgres
def test_concurrent_reservations_on_postgresql_never_let_a_subject_pass_the_budget(postgres_database) -> None:
    PrivacyLedger(postgres_database).close()  # migrate once
    people = [f"p{i:03d}" for i in range(150)]
    sigma = 1.2  # each run uses a large share of the budget: only a few fit per subject
    fits, probe = 0, 0.0
    order = filter_order(LIFETIME)
    per_run = float(rdp_analysis.compute_rdp(q=RATE, noise_multiplier=sigma, steps=STEPS, orders=[order])[0])
    while epsilon_at_order(probe + per_run, order, LIFETIME.delta) <= LIFETIME.epsilon:
        probe += per_run
        fits += 1
    assert 1 <= fits < 6
    barrier = threading.Barrier(6)
    outcomes: list[str] = []
    lock = threading.Lock()

    def reserve(index: int) -> None:
        ledger = PrivacyLedger(postgres_database, migrate=False)
        try:
            barrier.wait()
            accounts = SubjectAccounts(ledger)
            reservation = accounts.reserve(
                SCOPE,
                [_planned(sigma=sigma)],
                LIFETIME,
                people,
                min_eligible=1,
                request_key=f"t{index}",
                record_unit_group_size=1,
            )
            with lock:
                outcomes.append(f"trained {len(reservation.eligible)}")
        except SubjectsExhaustedError:
            with lock:
                outcomes.append("refused")
        finally:
            ledger.close()

    threads = [threading.Thread(target=reserve, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(outcomes) == sorted(["refused"] * (6 - fits) + [f"trained {len(people)}"] * fits)
    ledger = PrivacyLedger(postgres_database, migrate=False)
    accounts = SubjectAccounts(ledger)
    epsilons = accounts.subject_epsilons(SCOPE.dataset, LIFETIME, people, record_unit_group_size=1)
    assert max(epsilons.values()) <= LIFETIME.epsilon + 1e-9
    assert np.allclose(list(epsilons.values()), epsilon_at_order(fits * per_run, order, LIFETIME.delta))
    assert [c["subjects"] for c in accounts.cohorts(SCOPE.dataset)] == [len(people)]  # one shared history
    ledger.close()
