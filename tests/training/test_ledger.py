"""Privacy ledger: migrations, composition, reservations and refusals, pre-charging, take-over (SQLite and PG)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from ppml.errors import PPMLError
from ppml.ledger import (
    BudgetExceededError,
    Charge,
    DataScope,
    LifetimeBudget,
    PlannedRun,
    PrivacyLedger,
    compose,
)
from ppml.ledger.composition import PRV_MAX_SEGMENTS
from ppml.training import epsilon_of_history

DELTA = 1e-5


def planned(index: int = 0, sigma: float = 1.1, rate: float = 0.01, steps: int = 500) -> PlannedRun:
    epsilon = epsilon_of_history([(sigma, rate, steps)], DELTA, "prv")
    return PlannedRun(
        index, f"fp{index}", {"lr": 0.1}, "prv", round(epsilon, 6), DELTA, sigma, sigma, rate, steps, epsilon
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    ledger = PrivacyLedger(url)
    yield ledger
    ledger.close()


class TestComposition:
    def test_single_run_is_charged_its_own_epsilon(self) -> None:
        run = planned().charge()
        result = compose([run], DELTA)
        assert result.basic_epsilon == pytest.approx(run.epsilon) and result.epsilon == pytest.approx(run.epsilon)
        assert result.rdp_epsilon > result.epsilon  # RDP is looser for a single run: the minimum is taken

    def test_many_runs_compose_tighter_than_basic_but_never_below_one_run(self) -> None:
        run = planned().charge()
        result = compose([run] * 4, DELTA)
        assert result.epsilon < 4 * run.epsilon and result.epsilon > run.epsilon
        assert result.basic_delta == pytest.approx(4 * DELTA) and result.method in ("rdp", "prv")
        assert result.epsilon == min(e for e in (result.rdp_epsilon, result.prv_epsilon) if e is not None)

    def test_basic_composition_is_used_only_when_its_delta_fits(self) -> None:
        run = planned().charge()
        small_delta = Charge(run.noise_multiplier, run.sample_rate, run.steps, run.epsilon, DELTA / 10)
        assert compose([small_delta] * 2, DELTA).basic_delta <= DELTA
        assert compose([run] * 2, DELTA).basic_delta > DELTA  # then only RDP / PRV may bound it

    def test_no_noise_is_infinite_and_prv_is_skipped_for_many_distinct_runs(self) -> None:
        assert compose([Charge(0.0, 0.1, 10, math.inf, DELTA)], DELTA).epsilon == math.inf
        distinct = [Charge(1.0 + i / 10, 0.01, 100, 0.5, DELTA / 10) for i in range(PRV_MAX_SEGMENTS + 1)]
        result = compose(distinct, DELTA)
        assert result.prv_epsilon is None and result.epsilon <= result.rdp_epsilon

    def test_empty(self) -> None:
        assert compose([], DELTA).epsilon == 0.0


def test_migrations_are_prefixed_idempotent_and_bundled(ledger: PrivacyLedger) -> None:
    ledger.migrate()  # second upgrade is a no-op
    tables = set(sa.inspect(ledger.engine).get_table_names())
    assert {
        "ppml_ledger_datasets",
        "ppml_ledger_requests",
        "ppml_ledger_runs",
        "ppml_ledger_events",
        "ppml_ledger_alembic_version",
    } <= tables
    assert "alembic_version" not in tables  # Dagster's own Alembic table is left alone


def test_reserve_refuse_and_report(ledger: PrivacyLedger) -> None:
    scope = DataScope("adult", ("2026-03-01", "2026-03-02"), "hash")
    run = planned()
    lifetime = LifetimeBudget(epsilon=run.epsilon_planned * 2.2, delta=DELTA, warn_fraction=0.6)
    first = ledger.reserve(scope, [run], lifetime, request_key="a")
    assert first.spent_before.epsilon == 0 and first.projected.epsilon == pytest.approx(run.epsilon_planned)
    second = ledger.reserve(scope, [run], lifetime, request_key="b")
    assert second.spent_before.epsilon == pytest.approx(run.epsilon_planned)
    with pytest.raises(BudgetExceededError) as refused:
        ledger.reserve(scope, [run, run, run], lifetime, request_key="c")
    message = str(refused.value)
    assert "spent epsilon" in message and "requested epsilon" in message and "limit" in message
    assert refused.value.projected.epsilon > lifetime.epsilon >= refused.value.spent.epsilon
    statuses = {r.status for r in ledger.runs("adult")}
    assert statuses == {"running", "refused"}
    assert sum(r.status == "refused" for r in ledger.runs("adult")) == 3
    [status] = ledger.budget_status("adult", lifetime)
    assert status.warning and not status.exhausted and status.running == 2 and status.runs == 2
    assert status.remaining_epsilon == pytest.approx(lifetime.epsilon - status.spent.epsilon)
    assert any(e["kind"] == "refused" for e in ledger.events(dataset="adult"))


def test_precharge_is_monotone_owned_and_what_a_failed_run_keeps(ledger: PrivacyLedger) -> None:
    scope = DataScope("adult")
    run = planned(steps=400)
    lifetime = LifetimeBudget(10.0, DELTA)
    [run_id] = ledger.reserve(scope, [run], lifetime, request_key="k").run_ids
    ledger.pre_charge(run_id, steps=100, epsilon=0.2)
    ledger.pre_charge(run_id, steps=50, epsilon=0.1)  # a late, smaller write never lowers the charge
    ledger.record_progress(run_id, steps=100, epsilon=0.2)
    row = ledger.run(run_id)
    assert (row.steps_charged, row.epsilon_charged, row.steps_completed) == (100, 0.2, 100)
    assert row.charge().steps == 400  # while running: the full plan
    ledger.fail_run(run_id, "RuntimeError: out of memory")
    failed = ledger.run(run_id)
    assert failed.status == "failed" and failed.charge().steps == 100 and failed.charge().epsilon == 0.2
    with pytest.raises(PPMLError, match="no longer running under this process"):
        ledger.pre_charge(run_id, steps=200, epsilon=0.4)


def test_partitions_compose_only_when_they_can_hold_the_same_people(ledger: PrivacyLedger) -> None:
    run = planned()
    lifetime = LifetimeBudget(run.epsilon_planned * 1.1, DELTA)
    ledger.reserve(DataScope("events", ("w1",)), [run], lifetime, request_key="1")
    with pytest.raises(BudgetExceededError):  # weekly partitions hold the same people: composed
        ledger.reserve(DataScope("events", ("w2",)), [run], lifetime, request_key="2")
    ledger.reserve(DataScope("regions", ("north",), partitions_disjoint=True), [run], lifetime, request_key="3")
    ledger.reserve(DataScope("regions", ("south",), partitions_disjoint=True), [run], lifetime, request_key="4")
    with pytest.raises(BudgetExceededError, match="partition 'north'"):
        ledger.reserve(
            DataScope("regions", ("north", "south"), partitions_disjoint=True), [run], lifetime, request_key="5"
        )
    assert {s.partition for s in ledger.budget_status("regions", lifetime)} == {"north", "south"}
    with pytest.raises(PPMLError, match="partitions_disjoint"):
        ledger.reserve(DataScope("regions", ("east",)), [run], lifetime, request_key="6")


def test_take_over_refuses_a_live_owner_and_continues_a_dead_one(ledger: PrivacyLedger, tmp_path) -> None:
    scope = DataScope("adult")
    lifetime = LifetimeBudget(10.0, DELTA)
    reservation = ledger.reserve(scope, [planned(0), planned(1)], lifetime, request_key="req")
    run_ids = list(reservation.run_ids)
    with pytest.raises(PPMLError, match="still being trained"):  # this very process owns them
        ledger.take_over(reservation.request_id, scope, lifetime, resume=run_ids[:1])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ghost_owner = f"{os.uname().nodename}:{dead.stdout.strip()}:1"
    from ppml.ledger.schema import runs

    with ledger.engine.begin() as connection:
        connection.execute(runs.update().where(runs.c.id.in_(run_ids)).values(owner=ghost_owner))
    ledger_runs_before = len(ledger.runs("adult"))
    taken = ledger.take_over(
        reservation.request_id, scope, lifetime, resume=run_ids[:1], replace={run_ids[1]: planned(1)}
    )
    assert taken.run_ids[0] == run_ids[0] and len(taken.run_ids) == 2
    rows = {r.id: r for r in ledger.runs("adult")}
    assert rows[run_ids[0]].status == "running" and rows[run_ids[1]].status == "abandoned"
    assert len(rows) == ledger_runs_before + 1
    assert ledger.open_request("adult", "req")[0] == reservation.request_id
