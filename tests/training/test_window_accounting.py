"""``privacy.record_accounting: window`` (issue 10): for the record unit the budget is kept per daily partition, so
a weekly schedule charges a record only for the runs whose window held its day -- and the total stays what an
independent per-day recomputation gives; ``dataset`` (the default) composes every run for everyone."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import pytest

from ppml.errors import PPMLError
from ppml.ledger import DataScope, LifetimeBudget, PlannedRun, PrivacyLedger
from ppml.ledger.composition import Charge, compose
from ppml.policy import load_policy
from ppml_assets.common import data_scope
from tests.graph_support import write_policy
from tests.support import REPO_ROOT, TEST_FIRST_DAY

LIFETIME = LifetimeBudget(2.5, 1e-5)
SIGMA, RATE, STEPS, EPSILON = 1.2, 0.02, 300, 1.735  # one run: epsilon ~1.5-1.7, two ~2.2, three ~2.6
WINDOW, WEEKS = 14, 3


def _weekly_bench():  # type: ignore[no-untyped-def]
    """bench/weekly_bench.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("weekly_bench", REPO_ROOT / "bench" / "weekly_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _planned() -> PlannedRun:
    return PlannedRun(0, "fp", {"test": True}, "rdp", EPSILON, 1e-5, SIGMA, SIGMA, RATE, STEPS, EPSILON)


def _window(as_of: date) -> tuple[str, ...]:
    return tuple((as_of - timedelta(days=d)).isoformat() for d in range(WINDOW))


def _weekly(ledger: PrivacyLedger, disjoint: bool) -> list[str]:
    """Reserve and complete one run per week over a sliding window; the outcome of each week."""
    outcomes = []
    for week in range(WEEKS):
        as_of = date(2026, 1, WINDOW) + timedelta(days=7 * week)
        scope = DataScope("weekly-people", _window(as_of), partitions_disjoint=disjoint)
        try:
            reservation = ledger.reserve(scope, [_planned()], LIFETIME, request_key=f"week-{week}-{disjoint}")
        except PPMLError:
            outcomes.append("refused")
            continue
        run_id = reservation.run_ids[0]
        ledger.pre_charge(run_id, steps=STEPS, epsilon=EPSILON)
        ledger.complete_run(run_id, steps=STEPS, epsilon=EPSILON)
        outcomes.append("trained")
    return outcomes


def test_window_accounting_charges_a_day_only_for_the_runs_that_held_it(tmp_path: Path) -> None:
    one_run = Charge(SIGMA, RATE, STEPS, EPSILON, 1e-5)
    windowed = PrivacyLedger(f"sqlite:///{tmp_path / 'window.db'}")
    whole = PrivacyLedger(f"sqlite:///{tmp_path / 'dataset.db'}")
    try:
        assert _weekly(windowed, disjoint=True) == ["trained"] * WEEKS  # a day is in at most 2 windows, for ever
        outcomes = _weekly(whole, disjoint=False)
        assert outcomes[0] == "trained" and "refused" in outcomes  # every run counts for everyone: it runs out
        statuses = {s.partition: s for s in windowed.budget_status("weekly-people", LIFETIME)}
        holding: dict[str, int] = {}
        for week in range(WEEKS):  # independent: which weekly windows hold each day
            for day in _window(date(2026, 1, WINDOW) + timedelta(days=7 * week)):
                holding[day] = holding.get(day, 0) + 1
        assert set(statuses) == set(holding)
        for day, count in holding.items():
            expected = compose([one_run] * count, LIFETIME.delta).epsilon
            assert statuses[day].spent.epsilon == pytest.approx(expected, rel=1e-6)
            assert statuses[day].spent.epsilon <= LIFETIME.epsilon
        assert max(holding.values()) == 2  # ceil(14 / 7): the rule the weekly schedule's budget is sized by
        # bench/weekly_bench.py's independent per-day recomputation (raw rows, Opacus RDP) agrees
        recomputed = _weekly_bench().independent_max_epsilon(
            f"sqlite:///{tmp_path / 'window.db'}", "weekly-people", LIFETIME.delta, False, 1, per_day=True
        )
        two = compose([one_run] * 2, LIFETIME.delta)
        assert recomputed == pytest.approx(two.rdp_epsilon, rel=1e-3)
        assert max(s.spent.epsilon for s in statuses.values()) <= recomputed + 1e-9 <= LIFETIME.epsilon
    finally:
        windowed.close()
        whole.close()


def test_the_policy_declares_window_accounting_for_the_record_unit_only(tmp_path: Path) -> None:
    as_of = (date.fromisoformat(TEST_FIRST_DAY) + timedelta(days=3)).isoformat()
    windowed = load_policy(write_policy(tmp_path, privacy__record_accounting="window"))
    assert data_scope(windowed, as_of).partitions_disjoint is True
    (tmp_path / "default").mkdir()
    default = load_policy(write_policy(tmp_path / "default"))
    assert default.policy.privacy.record_accounting == "dataset"
    assert data_scope(default, as_of).partitions_disjoint is False
    (tmp_path / "subject").mkdir()
    path = write_policy(tmp_path / "subject", privacy__record_accounting="window", privacy__privacy_unit="subject")
    with pytest.raises(PPMLError) as error:
        load_policy(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "record_accounting" in message and "fix:" in message


def test_the_weekly_bench_policies_follow_the_rule(tmp_path: Path) -> None:
    """bench/weekly_bench.py's bundled policy keeps the budget per day and leaves out the releases that would make
    13 weeks pass the budget; its repeated policy is per subject with the audit off (docs/training.md)."""
    bench = _weekly_bench()
    (tmp_path / "bundled").mkdir()
    (tmp_path / "repeated").mkdir()
    bundled = load_policy(bench.write_policy(tmp_path / "bundled", "bundled", 90)).policy
    assert bundled.privacy.record_accounting == "window" and bundled.privacy.privacy_unit == "record"
    assert bundled.collection.training_window_days == 90 and bundled.privacy.dp_statistics_epsilon == 0.05
    assert bundled.evaluation.audit_canaries == 0 and bundled.evaluation.reference_models == 0
    assert bundled.evaluation.gradient_canaries > 0  # the white-box audit still runs and is charged
    repeated = load_policy(bench.write_policy(tmp_path / "repeated", "repeated", 90)).policy
    assert repeated.privacy.privacy_unit == "subject" and repeated.privacy.record_accounting == "dataset"


def test_the_weekly_bench_holds_people_out_and_renders_its_table(tmp_path: Path) -> None:
    """The held-out people never land (bundled: a seeded share of the people; repeated: Adult rows that are not
    the variant's people), and ``--render`` turns a ``--json`` file into the documented summary and table."""
    import json

    from ppml.landing_zone import synthesize_records
    from ppml.landing_zone_repeated import synthesize_repeated_subject_records

    bench = _weekly_bench()
    landing, held_out = bench._hold_out_people(synthesize_records(days=30))
    assert set(landing["record_id"]).isdisjoint(held_out["record_id"])
    assert abs(len(held_out) / (len(held_out) + len(landing)) - bench.HELD_OUT_FRACTION) < 0.01
    unused = bench._unused_adult_rows(30)
    people = synthesize_repeated_subject_records(days=30)
    columns = ["age", "education", "occupation", "native_country", "fnlwgt"]
    overlap = unused[columns].merge(people[columns].drop_duplicates(), on=columns)
    assert len(unused) == bench.HELD_OUT_PEOPLE and len(overlap) < 0.01 * len(unused)  # (Adult has duplicate rows)
    week = {"week": 1, "as_of": "2025-03-31", "trained": True, "promoted": True, "accuracy": 0.81, "seconds": 60.0}
    week |= {"ledger_max_subject_epsilon": 1.5, "recomputed_max_subject_epsilon": 1.6, "budget": 8.0}
    week |= {"held_out_accuracy": {"value": 0.82, "ci_low": 0.81, "ci_high": 0.83}}
    later = week | {"week": 2, "held_out_accuracy": {"value": 0.80, "ci_low": 0.79, "ci_high": 0.81}}
    path = tmp_path / "weekly.json"
    path.write_text(json.dumps({"variant": "bundled", "complete": True, "wall_seconds": 120, "weeks": [week, later]}))
    bench.main(["--render", str(path)])
    table = bench.render(json.loads(path.read_text()))
    assert "2 of 2 weeks trained" in table and "below week 1: [2]" in table and "| 2 | 2025-03-31 |" in table
