"""A year of weekly retraining, simulated with the real assets (issue 10, item 3). A benchmark, not a test.

The bundled data (or its repeated-subject variant) is spread over ``--days`` (>= 400) days of arrivals; then, for
each of ``--weeks`` weeks, the week's new days are collected and de-identified (``collection_job``) and the whole
``training_job`` runs as of the week's last day: anonymize, train, evaluate, gate, register, report. Per week it
prints: trained or refused, eligible and excluded subjects, the highest per-subject epsilon against the budget --
the ledger's and an independent recomputation from the ledger's raw run rows with Opacus' RDP analysis at the best
order per subject (for the record unit every run counts for everyone) -- and the test accuracy.

    .venv/bin/python bench/weekly_bench.py --variant repeated --weeks 2      # a smoke run
    .venv/bin/python bench/weekly_bench.py --variant repeated --weeks 52 --json bench/results/weekly_repeated.json
    .venv/bin/python bench/weekly_bench.py --variant bundled --weeks 52      # record unit, the demo's policy

Everything happens in a private workspace (``--home``, default a new temporary folder); nothing personal is
printed (counts and epsilons only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: far enough back that all of a 52-week run's days (447) lie before today: Dagster has no partition for a day that
#: has not ended yet, so a simulated week after today's date cannot be collected
FIRST_DAY = date(2025, 1, 1)
#: the fixed held-out people of the accuracy target (never in the landing zone, scored every week)
HELD_OUT_FRACTION = 0.15
HELD_OUT_PEOPLE = 8_000
HELD_OUT_SEED = 20261201
ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [128, 256]

#: the subject-unit policy of the repeated variant: per person, c records per window, a cheap OpenDP summary
SUBJECT_POLICY = {
    "privacy": {
        "privacy_unit": "subject",
        "max_records_per_subject": 4,
        "min_eligible_subjects": 1000,
        "dp_statistics_epsilon": 0.02,
    },
    # the white-box audit and LiRA's reference models are record-unit DP runs: they would count for every subject
    # as a group of c, every week, without amplification (docs/training.md, "the weekly simulation")
    "evaluation": {"audit_canaries": 0, "gradient_canaries": 0, "reference_models": 0},
}

#: the record-unit policy of the bundled variant: the budget is kept per day (a record lies in one daily
#: partition, so it is charged only by the ~ceil(window / 7) weekly runs whose window held it), and each week's
#: releases are sized so that that many weeks fit in the lifetime budget (the rule in docs/training.md): the model
#: and the white-box audit at the policy's epsilon, a small OpenDP summary, no black-box canary audit and no LiRA
#: reference models (each would be one more DP run a week: 13 weeks would then pass the budget).
RECORD_POLICY = {
    "privacy": {"record_accounting": "window", "dp_statistics_epsilon": 0.05},
    "evaluation": {"reference_models": 0, "audit_canaries": 0},
}


def write_policy(home: Path, variant: str, window_days: int) -> Path:
    """The demo's policy with absolute paths, the window, and (repeated variant) the subject unit."""
    base = REPO / "policies" / "adult_gdpr.yaml"
    document = yaml.safe_load(base.read_text())
    for qi in document["schema"]["quasi_identifiers"].values():
        if "hierarchy" in qi:
            qi["hierarchy"] = str((base.parent / qi["hierarchy"]).resolve())
    document["collection"]["erasure_list"] = str((base.parent / document["collection"]["erasure_list"]).resolve())
    document["collection"]["training_window_days"] = window_days
    document["allow_absolute_paths"] = True
    for section, values in (SUBJECT_POLICY if variant == "repeated" else RECORD_POLICY).items():
        document.setdefault(section, {}).update(values)
    path = home / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def write_landing(root: Path, variant: str, days: int) -> tuple[dict[str, Any], Any]:
    """The landing zone, and the fixed held-out people every week's model is also scored on."""
    from ppml.landing_zone import synthesize_records, write_landing_zone
    from ppml.landing_zone_repeated import synthesize_repeated_subject_records

    if variant == "repeated":
        records = synthesize_repeated_subject_records(first_day=FIRST_DAY, days=days)
        held_out = _unused_adult_rows(days)
    else:
        records, held_out = _hold_out_people(synthesize_records(first_day=FIRST_DAY, days=days))
    summary = write_landing_zone(root, records)
    landing = {"records": summary.records, "days": summary.days, "people": int(records["record_id"].nunique())}
    return landing | {"held_out_people": len(held_out)}, held_out


def _hold_out_people(records: Any) -> tuple[Any, Any]:
    """Bundled variant: a seeded HELD_OUT_FRACTION of the people never lands (one record per person here)."""
    import numpy as np

    people = np.sort(records["record_id"].unique())
    held = set(people[np.random.default_rng(HELD_OUT_SEED).random(len(people)) < HELD_OUT_FRACTION])
    mask = records["record_id"].isin(held).to_numpy()
    return records[~mask].reset_index(drop=True), records[mask].reset_index(drop=True)


def _unused_adult_rows(days: int) -> Any:
    """Repeated variant: the zone's people are a third of the Adult rows; HELD_OUT_PEOPLE of the other rows (people
    who never appear in it) are the held-out set."""
    import numpy as np

    from ppml.landing_zone import read_bundled_adult
    from ppml.landing_zone_repeated import DEFAULT_SEED, plan_repeated_subjects

    adult = read_bundled_adult().drop(columns=["official_split"])
    plan = plan_repeated_subjects(len(adult), DEFAULT_SEED, days)  # the variant's own people
    unused = np.setdiff1d(np.arange(len(adult)), plan.base_rows)
    chosen = np.sort(np.random.default_rng(HELD_OUT_SEED).choice(unused, size=HELD_OUT_PEOPLE, replace=False))
    return adult.iloc[chosen].reset_index(drop=True)


def held_out_accuracy(home: Path, evidence: dict[str, Any] | None, held_out: Any, loaded: Any) -> dict | None:
    """The week's registered version (promoted or not) scored on the fixed held-out people, through its serving
    spec as `ppml serve` would: the week-to-week comparison the target asks for, free of the test split's noise
    (each week's test split is ~1,500 different records: its 95% CI is +-2 points, wider than the target)."""
    decision = (evidence or {}).get("decision") or {}
    if not decision.get("model_name") or decision.get("version") is None:
        return None
    from mlflow import MlflowClient

    from ppml.evaluation.utility import utility_report
    from ppml.serving.registry import load_version

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    served = load_version(client, decision["model_name"], str(decision["version"]))
    records = held_out.astype(object).where(held_out.notna(), None).to_dict("records")
    probabilities = served.predict([served.builder.released_values(record) for record in records])
    label = loaded.policy.schema_.label
    truth = (held_out[label.column].astype(str) == label.positive_value).to_numpy().astype(int)
    accuracy = utility_report(truth, probabilities, model="dp", seed=0).to_dict()["metrics"]["accuracy"]
    return {"value": accuracy["value"], "ci_low": accuracy["ci_low"], "ci_high": accuracy["ci_high"]}


def independent_max_epsilon(
    ledger_url: str, dataset: str, delta: float, subject_unit: bool, group: int, per_day: bool = False
) -> float:
    """The highest per-subject epsilon from the ledger's raw rows (its tables read directly, not its accounts):
    each subject's own subject-unit runs (its cohort's history) plus every record-unit run (as a group of
    ``group`` records for the subject unit), composed with Opacus' RDP analysis, best order per subject; with
    ``per_day`` (the record unit's window accounting) per daily partition, the most exposed day's records."""
    import numpy as np
    import sqlalchemy as sa
    from opacus.accountants.analysis import rdp as rdp_analysis

    engine = sa.create_engine(ledger_url)
    with engine.connect() as connection:
        runs = connection.execute(sa.text("SELECT * FROM ppml_ledger_runs WHERE dataset = :d"), {"d": dataset})
        rows = [dict(r._mapping) for r in runs]
        cohorts = []
        if subject_unit:
            query = "SELECT runs FROM ppml_ledger_subject_cohorts WHERE dataset = :d AND subjects > 0"
            cohorts = [json.loads(r[0]) for r in connection.execute(sa.text(query), {"d": dataset})]
    engine.dispose()
    orders = np.asarray(ORDERS, dtype=float)

    def rdp_of(row: dict[str, Any], g: int) -> np.ndarray:
        if row["status"] == "refused" or row["kind"] not in ("dp", "pure_dp"):
            return np.zeros_like(orders)
        running = row["status"] == "running"
        steps = row["planned_steps"] if running else row["steps_charged"]
        if not steps:
            return np.zeros_like(orders)
        if row["kind"] == "pure_dp":
            eps = g * float(row["epsilon_planned"] if running else row["epsilon_charged"])
            return np.minimum(eps, orders * eps**2 / 2)
        sigma, rate = float(row["noise_multiplier_applied"]), float(row["sample_rate"])
        if g > 1:
            sigma, rate = sigma / g, 1.0
        return np.asarray(rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=int(steps), orders=orders))

    per_run = {r["id"]: rdp_of(r, 1) for r in rows if r.get("privacy_unit") == "subject"}
    base = sum(
        (rdp_of(r, group if subject_unit else 1) for r in rows if r.get("privacy_unit") != "subject"),
        start=np.zeros_like(orders),
    )
    if subject_unit:
        totals = [base + sum((per_run.get(r, 0.0) for r in h), start=np.zeros_like(orders)) for h in cohorts or [[]]]
    elif per_day:
        totals = list(_per_day_totals(rows, rdp_of).values())  # a record is charged by the runs holding its day
    else:
        totals = [base]
    worst = 0.0
    for total in totals:
        if not np.any(total > 0):
            continue
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=total, delta=delta)
        worst = max(worst, float(epsilon))
    return worst


def _per_day_totals(rows: list[dict[str, Any]], rdp_of: Any) -> dict[str, Any]:
    """``record_accounting: window``: per daily partition, the RDP of every run whose partitions include it (a
    run over the whole data set, ``[]``, counts for every day)."""
    curves = {r["id"]: rdp_of(r, 1) for r in rows}
    days = {d for r in rows for d in json.loads(r["partitions"])}
    everywhere = [r["id"] for r in rows if not json.loads(r["partitions"])]
    totals = {}
    for day in days:
        ids = [r["id"] for r in rows if day in json.loads(r["partitions"])] + everywhere
        totals[day] = sum((curves[i] for i in ids), start=0.0)
    return totals


def execute(resources: dict[str, Any], job_name: str, instance: Any, **kwargs: Any) -> Any:
    """One job of the real code location, in process, on the bench's private resources."""
    from ppml_assets.definitions import defs

    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    job = defs.resolve_job_def(job_name)
    return job.execute_in_process(
        instance=instance, resources=resources, raise_on_error=False, run_config=quiet, **kwargs
    )


def run_week(
    resources: dict[str, Any], instance: Any, new_days: list[str], as_of: str
) -> tuple[bool, list[str], dict[str, float]]:
    """Collect the week's new days (one backfill run), then the training job as of the week's last day; with the
    seconds of each step (where a week's time goes)."""
    tags = {"dagster/asset_partition_range_start": new_days[0], "dagster/asset_partition_range_end": new_days[-1]}
    started = time.perf_counter()
    collected = execute(resources, "collection_job", instance, tags=tags)
    seconds = {"collection_job": round(time.perf_counter() - started, 1)}
    if not collected.success:
        return False, [str(e.message).splitlines()[0] for e in collected.all_events if e.is_failure][:1], seconds
    result = execute(resources, "training_job", instance, partition_key=as_of)
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS":
            seconds[event.step_key] = round(event.event_specific_data.duration_ms / 1000, 1)
    return result.success, [str(e.message).splitlines()[0] for e in result.all_events if e.is_failure][:2], seconds


def week_row(home: Path, as_of: str, loaded: Any, ledger_url: str, trained_now: bool, held_out: Any) -> dict[str, Any]:
    """One line of the table, from what the assets stored for this as-of day."""
    from ppml.ledger import LifetimeBudget, PrivacyLedger
    from ppml.ledger.subjects import SubjectAccounts

    privacy = loaded.policy.privacy
    subject_unit = privacy.privacy_unit == "subject"
    assets = home / "assets"
    model = _json(assets / "dp_model" / f"{as_of}.json") if trained_now else None
    evaluation = _json(assets / "model_evaluation" / f"{as_of}.json") if trained_now else None
    evidence = _json(home / "reports" / as_of / "evidence.json") if trained_now else None
    row: dict[str, Any] = {"as_of": as_of, "trained": model is not None}
    if model and subject_unit:
        row |= {k: model["subjects"][k] for k in ("eligible_subjects", "excluded_subjects", "epsilon_per_person")}
        delta = float(model["subjects"]["accounts"]["lifetime_delta"])
    else:
        delta = (
            float(model["target_delta"])
            if model
            else float(privacy.delta_for(10**6) if privacy.delta == "auto" else privacy.delta)
        )
    if evaluation:
        row["accuracy"] = (evaluation.get("dp") or {}).get("accuracy")
    if evidence:
        row["promoted"] = bool(evidence.get("decision", {}).get("promoted"))
        row["failing"] = [c["name"] for c in evidence.get("checks", []) if not c["passed"]]
        row["held_out_accuracy"] = held_out_accuracy(home, evidence, held_out, loaded)
    ledger = PrivacyLedger(ledger_url)
    try:
        lifetime = LifetimeBudget(privacy.lifetime_epsilon_budget, delta)
        if subject_unit:
            summary = SubjectAccounts(ledger).summary(
                loaded.policy.dataset.id, lifetime, record_unit_group_size=privacy.max_records_per_subject
            )
            row["ledger_max_subject_epsilon"] = summary["max_subject_epsilon"]
        else:
            status = ledger.budget_status(loaded.policy.dataset.id, lifetime)
            row["ledger_max_subject_epsilon"] = max((s.spent.epsilon for s in status), default=0.0)
    finally:
        ledger.close()
    row["recomputed_max_subject_epsilon"] = independent_max_epsilon(
        ledger_url,
        loaded.policy.dataset.id,
        delta,
        subject_unit,
        privacy.max_records_per_subject,
        per_day=privacy.record_accounting == "window",
    )
    row["budget"] = privacy.lifetime_epsilon_budget
    return row


def _load_average() -> str:
    """Beside every timing (the machine is shared)."""
    path = Path("/proc/loadavg")
    return " ".join(path.read_text().split()[:3]) if path.exists() else "?"


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=["bundled", "repeated"], default="repeated")
    parser.add_argument("--weeks", type=int, default=2)
    parser.add_argument(
        "--days", type=int, default=None, help="days of arrivals (default: 400, or what the weeks need)"
    )
    parser.add_argument("--window", type=int, default=90, help="the policy's training window in days")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the table here as well")
    parser.add_argument("--render", type=Path, default=None, help="print the markdown table of a --json file")
    args = parser.parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    needed = args.window + 7 * (args.weeks - 1)
    args.days = args.days or max(400, needed)
    if args.weeks < 1 or args.days < needed:
        parser.error(f"--days {args.days} is too short for a {args.window}-day window and {args.weeks} weeks")
    if FIRST_DAY + timedelta(days=args.days) >= date.today():
        parser.error(f"--days {args.days} from {FIRST_DAY} reaches today or later: those days have no partition yet")
    home = (args.home or Path(tempfile.mkdtemp(prefix="ppml-weekly-"))).resolve()
    home.mkdir(parents=True, exist_ok=True)
    policy = write_policy(home, args.variant, args.window)
    # the code location reads these when it is imported: set them first
    os.environ.update(
        {
            "PPML_HOME": str(home),
            "PPML_POLICY": str(policy),
            "PPML_LANDING_ZONE": str(home / "landing"),
            "PPML_PARTITIONS_START": FIRST_DAY.isoformat(),
            "PPML_PARTITIONS_END": (FIRST_DAY + timedelta(days=args.days)).isoformat(),
            "DAGSTER_HOME": str(home / "dagster"),
        }
    )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the held-out scoring loads each version
    os.environ.setdefault("PPML_HMAC_KEY", hashlib.sha256(f"weekly bench {home}".encode()).hexdigest())
    started = time.perf_counter()
    landing, held_out = write_landing(home / "landing", args.variant, args.days)
    print(
        f"landing zone: {landing['records']} records of {landing['people']} people over {landing['days']} days; "
        f"{landing['held_out_people']} held-out people"
    )

    from dagster import instance_for_test

    from ppml.policy import load_policy
    from ppml_assets.definitions import build_resources
    from resources import LandingZoneSource

    ledger_url = f"sqlite:///{home / 'ledger.db'}"
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    resources = build_resources(
        home,
        policy,
        LandingZoneSource(root=str(home / "landing")),
        os.environ["PPML_HMAC_KEY"],
        f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        (home / "mlflow" / "artifacts").as_uri(),
        ledger_url,
    )
    loaded = load_policy(policy)
    rows = []
    with instance_for_test() as instance:
        if not execute(resources, "requirements_job", instance).success:
            raise SystemExit("requirements_job failed: the policy did not validate")
        collected_until = FIRST_DAY - timedelta(days=1)
        for week in range(args.weeks):
            as_of = FIRST_DAY + timedelta(days=args.window - 1 + 7 * week)
            new_days = [
                (collected_until + timedelta(days=d)).isoformat() for d in range(1, (as_of - collected_until).days + 1)
            ]
            week_started = time.perf_counter()
            success, failures, step_seconds = run_week(resources, instance, new_days, as_of.isoformat())
            collected_until = as_of
            trained = (home / "assets" / "dp_model" / f"{as_of.isoformat()}.json").is_file()
            row = {"week": week + 1, **week_row(home, as_of.isoformat(), loaded, ledger_url, trained, held_out)}
            row |= {"run_succeeded": success, "seconds": round(time.perf_counter() - week_started, 1)}
            row["step_seconds"] = dict(sorted(step_seconds.items(), key=lambda item: -item[1]))
            row["load_average"] = _load_average()
            if not trained:
                row["refused"] = failures[0] if failures else "dp_model did not materialize"
            rows.append(row)
            print(_line(row), flush=True)
            _write_json(args.json, args.variant, rows, time.perf_counter() - started, landing, complete=False)
    total = time.perf_counter() - started
    trained_weeks = sum(r["trained"] for r in rows)
    worst = max((r["recomputed_max_subject_epsilon"] for r in rows), default=0.0)
    print(
        f"{trained_weeks} of {len(rows)} weeks trained; highest per-subject epsilon {worst:.3f} "
        f"(budget {loaded.policy.privacy.lifetime_epsilon_budget}); wall {total:.0f} s"
    )
    _write_json(args.json, args.variant, rows, total, landing, complete=True)
    return 0


def _write_json(
    path: Path | None, variant: str, rows: list[dict[str, Any]], wall: float, landing: dict, *, complete: bool
) -> None:
    """The table so far (rewritten after every week, so a long run's partial results survive)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"variant": variant, "complete": complete, "weeks": rows, "wall_seconds": wall, "landing": landing}
    path.write_text(json.dumps(document, indent=2))


def render(document: dict[str, Any]) -> str:
    """The markdown summary and table of a ``--json`` file (what docs/training.md and bench/results hold)."""
    weeks = document["weeks"]
    subject = document["variant"] == "repeated"
    trained = [w for w in weeks if w["trained"]]
    held = [(w["week"], (w.get("held_out_accuracy") or {}).get("value")) for w in weeks]
    first = next((value for _, value in held if value is not None), None)
    below = [week for week, value in held if value is not None and first is not None and value < first - 0.01]
    above = [week for week, value in held if value is not None and first is not None and value > first + 0.01]
    worst = max((w["recomputed_max_subject_epsilon"] for w in weeks), default=0.0)
    worst_ledger = max((w["ledger_max_subject_epsilon"] for w in weeks), default=0.0)
    values = [value for _, value in held if value is not None]
    lines = [
        f"{len(trained)} of {len(weeks)} weeks trained, {sum(bool(w.get('promoted')) for w in weeks)} promoted; "
        f"highest per-subject epsilon {worst_ledger:.3f} (ledger) / {worst:.3f} (recomputed) of "
        f"{weeks[0]['budget'] if weeks else '?'}; held-out accuracy {min(values, default=0):.4f}-"
        f"{max(values, default=0):.4f} (week 1 {first if first is None else round(first, 4)}); weeks more than 1 "
        f"point below week 1: {below or 'none'}; more than 1 point above: {above or 'none'}; wall "
        f"{document['wall_seconds'] / 60:.0f} min{'' if document.get('complete') else ' (incomplete run)'}",
        "",
        "| week | as of | trained | "
        + ("eligible | excluded | " if subject else "")
        + "max ε ledger | max ε recomputed | held-out accuracy (95% CI) | test-split accuracy | promoted | s |",
        "|---" * (11 if subject else 9) + "|",
    ]
    for w in weeks:
        h = w.get("held_out_accuracy") or {}
        cell = f"{h['value']:.4f} ({h['ci_low']:.3f}-{h['ci_high']:.3f})" if h else "-"
        counts = f"{w.get('eligible_subjects', '-')} | {w.get('excluded_subjects', '-')} | " if subject else ""
        test = f"{w['accuracy']:.4f}" if w.get("accuracy") is not None else "-"
        lines.append(
            f"| {w['week']} | {w['as_of']} | {'yes' if w['trained'] else 'no'} | {counts}"
            f"{w['ledger_max_subject_epsilon']:.3f} | {w['recomputed_max_subject_epsilon']:.3f} | {cell} | {test} | "
            f"{w.get('promoted')} | {w['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def _line(row: dict[str, Any]) -> str:
    state = "trained" if row["trained"] else f"refused ({row.get('refused', '')[:120]})"
    accuracy = row.get("accuracy")
    held = (row.get("held_out_accuracy") or {}).get("value")
    failing = f" (failing: {', '.join(row['failing'])})" if row.get("failing") else ""
    return (
        f"week {row['week']:>2} as of {row['as_of']}: {state}; eligible {row.get('eligible_subjects', '-')}, "
        f"excluded {row.get('excluded_subjects', '-')}; max subject epsilon ledger "
        f"{row['ledger_max_subject_epsilon']:.3f} / recomputed {row['recomputed_max_subject_epsilon']:.3f} of "
        f"{row['budget']}; accuracy {accuracy if accuracy is None else round(accuracy, 4)} "
        f"(held out {held if held is None else round(held, 4)}); "
        f"promoted {row.get('promoted')}{failing}; {row['seconds']} s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
