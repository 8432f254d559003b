"""Fast start: the vectorized landing zone keeps its contract, the CLI imports stay light, and the fast-start
benchmark runs on a toy size (so it cannot rot)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from ppml.landing_zone import synthesize_records, synthetic_identifiers
from tests.support import REPO_ROOT


def test_synthetic_identifiers_are_shaped_like_fakers() -> None:
    ids = synthetic_identifiers(np.random.default_rng(7), 2000)
    assert ids["ssn"].str.fullmatch(r"(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}").all()
    assert ids["phone"].str.fullmatch(r"\(\d{3}\) \d{3}-\d{4}").all()
    assert ids["zip"].str.fullmatch(r"\d{5}").all() and ids["zip"].astype(int).between(501, 99950).all()
    assert ids["email"].str.fullmatch(r"[a-z]+\.[a-z]+\d{1,2}@(gmail|yahoo|hotmail)\.com").all()
    assert ids["name"].nunique() > 1500 and ids["street_address"].str.fullmatch(r"\d{3,5} [A-Za-z]+ [A-Za-z]+").all()


def test_a_few_days_hold_exactly_the_records_of_the_full_landing_zone() -> None:
    full = synthesize_records()
    wanted = ["2026-03-01", "2026-04-30"]
    some = synthesize_records(only_days=wanted)
    expected = full[full["event_date"].isin(wanted)].reset_index(drop=True)
    pd.testing.assert_frame_equal(some, expected)
    assert full["record_id"].is_unique and full["ssn"].nunique() > 0.99 * len(full)
    born = pd.to_datetime(full["date_of_birth"])
    event = pd.to_datetime(full["event_date"])
    assert (event.dt.year - born.dt.year == full["age"]).all()  # born in the year the age says


def test_the_cli_does_not_import_the_engines_or_pandas() -> None:
    heavy = ("pandas", "ppml.anonymization", "dagster")
    code = f"import sys, ppml.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_choices_are_the_engines_own_names() -> None:
    from ppml.anonymization.metrics import METRICS
    from ppml.cli_anonymize import METRIC_NAMES

    assert list(METRICS) == METRIC_NAMES


def test_the_report_identifier_check_finds_exactly_the_values_of_six_or_more_characters() -> None:
    from ppml.reporting import _find_forbidden

    document = '{"name": "Jennifer Strickland", "zip": "63723", "note": "ssn 189-34-403"}'
    assert _find_forbidden(document, {"Jennifer Strickland"})
    assert _find_forbidden(document, {"nothing here", "Strick"})  # a substring of the document, 6 characters
    assert not _find_forbidden(document, {"63723"})  # shorter than 6: not searched for
    assert not _find_forbidden(document, {"189-34-4030", "Jennifer Stricklands"})
    assert not _find_forbidden("", {"Jennifer"}) and not _find_forbidden(document, set())


def test_fast_start_bench_smoke(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "fast_start.md"
    done = subprocess.run(
        [sys.executable, "bench/fast_start_bench.py", "--records", "200", "--repeat", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| identifiers of 200 records |" in out.read_text() and "load average" in out.read_text()
