"""Cost of the per-subject ledger per run on PostgreSQL (issue 10, performance): reserve + charge + eligibility.

A fixed population of ``--subjects`` people is split into ``--phases`` groups (13: a 90-day window holds ~13 weekly
runs); run ``t`` includes every group but ``t mod phases`` -- that group's records aged out of the window -- so a
run's request names 12/13 of the population and histories repeat by group, as sliding windows make them. Each run:

* ``reserve``: the filter's eligibility decision for every requested subject, the runs' insertion at their full
  plan, the cohort moves (one transaction under the data set's lock);
* ``charge``: one pre-charge per epoch and the completion of every candidate run;
* ``eligibility``: ``summary`` (the highest per-subject epsilon against the budget, what the report states).

It prints one row per run and the storage (rows and bytes of the subject and cohort tables). Its database is its
own (``ppml_ledger_bench_<random>``), created on ``--server`` and dropped afterwards.

    nice -n 10 .venv/bin/python bench/ledger_bench.py --subjects 50000 1000000 --runs 6 --out bench/results/ledger.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ppml.ledger import DataScope, LifetimeBudget, PlannedRun, PrivacyLedger  # noqa: E402
from ppml.ledger.subjects import SubjectAccounts  # noqa: E402

SERVER = os.environ.get("PPML_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
LIFETIME = LifetimeBudget(8.0, 1e-6)
SIGMA, RATE, EPOCHS, STEPS_PER_EPOCH = 2.0, 0.01, 15, 100  # two such candidates a run: ~24 runs fit the budget


@contextmanager
def own_database(server: str) -> Iterator[str]:
    """A fresh database for the benchmark, dropped afterwards whatever happens."""
    name = f"ppml_ledger_bench_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def planned(candidates: int) -> list[PlannedRun]:
    steps = EPOCHS * STEPS_PER_EPOCH
    return [
        PlannedRun(i, f"bench-{i}", {"bench": True}, "rdp", 1.0, 1e-6, SIGMA, SIGMA, RATE, steps, 1.0)
        for i in range(candidates)
    ]


def bench_population(url: str, subjects: int, runs: int, phases: int, candidates: int) -> dict[str, Any]:
    """Run ``runs`` weekly requests over ``subjects`` people; per-run seconds of each part, and the storage."""
    ledger = PrivacyLedger(url)
    accounts = SubjectAccounts(ledger)
    people = [f"pseudonym-{i:08d}" for i in range(subjects)]
    rows = []
    try:
        for week in range(runs):
            request = [p for i, p in enumerate(people) if i % phases != week % phases]
            scope = DataScope("bench-people", (f"week-{week}",))
            started = time.perf_counter()
            reservation = accounts.reserve(
                scope,
                planned(candidates),
                LIFETIME,
                request,
                min_eligible=1,
                request_key=f"bench-{week}",
                record_unit_group_size=1,
            )
            reserved = time.perf_counter()
            for run_id in reservation.run_ids:
                for epoch in range(1, EPOCHS + 1):
                    ledger.pre_charge(run_id, steps=epoch * STEPS_PER_EPOCH, epsilon=1.0)
                ledger.complete_run(run_id, steps=EPOCHS * STEPS_PER_EPOCH, epsilon=1.0)
            ledger.finish_request(reservation.request_id, selected_run_id=reservation.run_ids[0])
            charged = time.perf_counter()
            summary = accounts.summary("bench-people", LIFETIME, record_unit_group_size=1)
            done = time.perf_counter()
            rows.append(
                {
                    "run": week + 1,
                    "requested": len(request),
                    "eligible": len(reservation.eligible),
                    "reserve_s": reserved - started,
                    "charge_s": charged - reserved,
                    "eligibility_s": done - charged,
                    "total_s": done - started,
                    "max_epsilon": summary["max_subject_epsilon"],
                    "cohorts": summary["cohorts"],
                }
            )
            print(_row(subjects, rows[-1]), flush=True)
        storage = _storage(ledger)
    finally:
        ledger.close()
    return {"subjects": subjects, "runs": rows, "storage": storage}


def _storage(ledger: PrivacyLedger) -> dict[str, int]:
    with ledger.engine.connect() as connection:
        result = {}
        for table in ("ppml_ledger_subjects", "ppml_ledger_subject_cohorts", "ppml_ledger_runs"):
            result[f"{table}_rows"] = int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
            size = connection.execute(sa.text(f"SELECT pg_total_relation_size('{table}')")).scalar_one()
            result[f"{table}_bytes"] = int(size)
    return result


def _row(subjects: int, row: dict[str, Any]) -> str:
    return (
        f"| {subjects:,} | {row['run']} | {row['requested']:,} | {row['eligible']:,} | {row['reserve_s']:.2f} | "
        f"{row['charge_s']:.2f} | {row['eligibility_s']:.2f} | {row['total_s']:.2f} | {row['cohorts']} | "
        f"{row['max_epsilon']:.3f} |"
    )


HEADER = (
    "| subjects | run | requested | eligible | reserve s | charge s | eligibility s | total s | cohorts | "
    "max subject eps |\n|---|---|---|---|---|---|---|---|---|---|"
)


def report(results: list[dict[str, Any]], command: str, load: str) -> str:
    lines = [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores, load average at the start: "
        f"{load}, at the end: {' '.join(_load())}",
        f"`{command}`",
        "",
        HEADER,
        *(_row(r["subjects"], row) for r in results for row in r["runs"]),
        "",
        "| subjects | subject rows | subject table bytes | cohort rows | cohort table bytes | run rows |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["storage"]
        lines.append(
            f"| {r['subjects']:,} | {s['ppml_ledger_subjects_rows']:,} | {s['ppml_ledger_subjects_bytes']:,} | "
            f"{s['ppml_ledger_subject_cohorts_rows']:,} | {s['ppml_ledger_subject_cohorts_bytes']:,} | "
            f"{s['ppml_ledger_runs_rows']:,} |"
        )
    return "\n".join(lines) + "\n"


def _load() -> list[str]:
    path = Path("/proc/loadavg")
    return path.read_text().split()[:3] if path.exists() else ["?"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, nargs="+", default=[50_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--phases", type=int, default=13, help="groups of the population (weekly runs a window holds)")
    parser.add_argument("--candidates", type=int, default=2, help="ledger runs per request (model selection)")
    parser.add_argument("--server", default=SERVER, help="PostgreSQL server URL (a database is created on it)")
    parser.add_argument("--out", type=Path, default=None, help="append the markdown table here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.phases < 2 or min(args.subjects) < args.phases:
        parser.error("need --runs >= 1, --phases >= 2 and at least --phases subjects")
    load = _load()
    print(HEADER)
    results = []
    for subjects in args.subjects:
        with own_database(args.server) as url:
            results.append(bench_population(url, subjects, args.runs, args.phases, args.candidates))
    command = "nice -n 10 .venv/bin/python bench/ledger_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(results, command, " ".join(load))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
