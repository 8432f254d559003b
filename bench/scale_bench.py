"""Whole-lifecycle scale benchmark: `ppml run` at 1x, 5x and 20x the bundled data, then a daily increment.

For each factor f the bundled landing zone (UCI Adult with synthetic identifiers, 48,842 records over 120 days)
is replicated f times (each copy with its own record ids, so subjects stay distinct), written as a landing zone,
and `ppml run --policy policies/adult_gdpr.yaml --landing-zone DIR` runs in a fresh workspace as a child
process. Reported: wall time, peak resident memory of the run (the child's ru_maxrss: the run executes in one
process), seconds per asset (STEP_SUCCESS durations from the run's Dagster event log), and the daily increment:
one more day of data delivered, then `ppml run` as of that day (collection of the window, retraining, gate).

    nice -n 10 .venv/bin/python bench/scale_bench.py --factors 1 5 20 --out bench/results/scale.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from ppml.landing_zone import EVENT_DATE_COLUMN, synthesize_records, write_landing_zone  # noqa: E402

POLICY = REPO / "policies" / "adult_gdpr.yaml"
BENCH_KEY = "scale-bench-key-" + "0" * 48  # a bench workspace's pseudonymization key, not a secret


def replicated(records: pd.DataFrame, factor: int) -> pd.DataFrame:
    """f copies of the landing records, each copy's record ids made distinct (distinct subjects)."""
    copies = []
    for copy in range(factor):
        part = records.copy()
        part["record_id"] = part["record_id"] + (f"-{copy}" if copy else "")
        copies.append(part)
    return pd.concat(copies, ignore_index=True)


def next_day(records: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One more day of arrivals: the last day's records, re-dated and with new record ids."""
    last = records[EVENT_DATE_COLUMN].max()
    day = (date.fromisoformat(last) + timedelta(days=1)).isoformat()
    arrivals = records[records[EVENT_DATE_COLUMN] == last].copy()
    arrivals[EVENT_DATE_COLUMN] = day
    arrivals["record_id"] = arrivals["record_id"] + "-next"
    return arrivals, day


def step_seconds(dagster_home: Path) -> dict[str, float]:
    """Seconds per asset step, summed over every run in the workspace's event log."""
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    seconds: dict[str, float] = defaultdict(float)
    for run in instance.get_runs():
        events = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.STEP_SUCCESS).records
        for record in events:
            event = record.event_log_entry.dagster_event
            seconds[event.step_key] += event.event_specific_data.duration_ms / 1000
    return dict(seconds)


#: Runs a command and reports its own children's peak RSS (KiB) on the last stderr line: one figure per run.
MEASURED = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print('PEAK_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)"
)


def run_ppml(home: Path, landing: Path, as_of: str | None) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit code) of one `ppml run` child process."""
    env = {**os.environ, "PPML_HOME": str(home), "PPML_HMAC_KEY": BENCH_KEY}
    for name in ("PPML_POLICY_DIR", "DAGSTER_HOME", "PPML_LANDING_ZONE"):
        env.pop(name, None)
    command = [
        str(Path(sys.executable).parent / "ppml"),
        "run",
        "--policy",
        str(POLICY),
        "--landing-zone",
        str(landing),
    ]
    if as_of:
        command += ["--as-of", as_of]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURED, *command], env=env, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_line = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KIB")]
    peak = int(peak_line[-1].split()[1]) / 1024 if peak_line else float("nan")
    if done.returncode:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
    return wall, peak, done.returncode


def one_factor(base: pd.DataFrame, factor: int, scratch: Path) -> dict:
    records = replicated(base, factor)
    landing = scratch / f"landing-{factor}x"
    write_landing_zone(landing, records)
    home = scratch / f"home-{factor}x"
    full_wall, full_peak, full_code = run_ppml(home, landing, None)
    full_steps = step_seconds(home / "dagster")
    arrivals, day = next_day(records)
    write_landing_zone(landing, arrivals)
    increment_wall, increment_peak, increment_code = run_ppml(home, landing, day)
    all_steps = step_seconds(home / "dagster")
    increment_steps = {k: all_steps[k] - full_steps.get(k, 0.0) for k in all_steps}
    return {
        "factor": factor,
        "rows": len(records),
        "full": (full_wall, full_peak, full_code),
        "increment": (increment_wall, increment_peak, increment_code),
        "full_steps": full_steps,
        "increment_steps": increment_steps,
    }


def table(results: list[dict]) -> str:
    lines = [
        "| data | rows | full run (s) | peak memory (MiB) | daily increment (s) | increment peak (MiB) "
        "| s per 10k rows |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        (fw, fp, fc), (iw, ip, ic) = r["full"], r["increment"]
        status = "" if fc == 0 and ic == 0 else f" (exit {fc}/{ic})"
        lines.append(
            f"| {r['factor']}x{status} | {r['rows']:,} | {fw:.0f} | {fp:.0f} | {iw:.0f} | {ip:.0f} | "
            f"{fw / (r['rows'] / 10_000):.1f} |"
        )
    steps = sorted({k for r in results for k in r["full_steps"]}, key=lambda k: -results[-1]["full_steps"].get(k, 0))
    lines += ["", "Seconds per step (full run; the daily increment in brackets):", ""]
    lines.append("| step | " + " | ".join(f"{r['factor']}x" for r in results) + " |")
    lines.append("|---|" + "---|" * len(results))
    for step in steps:
        cells = [f"{r['full_steps'].get(step, 0):.1f} ({r['increment_steps'].get(step, 0):.1f})" for r in results]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = synthesize_records()
    results = []
    with tempfile.TemporaryDirectory(prefix="ppml-scale-") as scratch:
        for factor in args.factors:
            results.append(one_factor(base, factor, Path(scratch)))
            print(table(results), flush=True)
    text = table(results)
    if args.out:
        command = " ".join(["bench/scale_bench.py", *sys.argv[1:]])
        args.out.write_text(
            f"# Whole-lifecycle scale\n\n`{command}` (load average {os.getloadavg()[0]:.1f})\n\n{text}\n"
        )


if __name__ == "__main__":
    main()
