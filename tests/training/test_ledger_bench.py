"""Smoke test of bench/ledger_bench.py (seconds, a toy population): it runs end to end on PostgreSQL, prints its
table and storage, and drops its own database afterwards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import REPO_ROOT


@pytest.mark.postgres
def test_ledger_bench_runs_on_a_toy_population_and_drops_its_database(postgres_server: str, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("ledger_bench", REPO_ROOT / "bench" / "ledger_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "ledger.md"
    before = _bench_databases(postgres_server)
    assert bench.main(["--subjects", "130", "--runs", "3", "--server", postgres_server, "--out", str(out)]) == 0
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 130 |")]
    assert len(rows) == 3 + 1  # one per run, one storage row
    assert rows[-1].split("|")[2].strip() == "130"  # one subject row per subject, whatever the runs
    assert "load average" in text and "bench/ledger_bench.py --subjects 130" in text
    assert _bench_databases(postgres_server) <= before  # its own database was dropped afterwards


def _bench_databases(server: str) -> set[str]:
    engine = sa.create_engine(server)
    with engine.connect() as connection:
        names = connection.execute(sa.text("SELECT datname FROM pg_database")).scalars().all()
    engine.dispose()
    return {n for n in names if n.startswith("ppml_ledger_bench_")}
