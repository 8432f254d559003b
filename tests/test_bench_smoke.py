"""Smoke tests of the benchmark scripts (bench/ is not a package), so that a script cannot rot unnoticed.

Each runs in seconds at toy size; its figures mean nothing, only that every step of the script still works.
A whole ``ppml run`` is too slow for that (scale_bench's smallest real run takes minutes), so scale_bench's
steps are run one by one here: the replicated landing zone, the measured child ``ppml run`` (refused in one line
before its first step), the event-log query of a real Dagster instance, and the table.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from types import ModuleType

import pytest

from tests.support import REPO_ROOT, TEST_FIRST_DAY, days


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore")
def test_audit_bench_at_toy_size(tmp_path: Path) -> None:
    audit = _bench("audit_bench")
    out = tmp_path / "audit.md"
    arguments = ["--seeds", "1", "--honest-seeds", "1", "--epsilons", "1", "--records", "60", "--hidden", "4"]
    arguments += ["--canaries", "20", "--bugs", "noise_x0", "--accountant", "rdp", "--out", str(out)]
    try:
        audit.main(arguments)
    finally:
        logging.disable(logging.NOTSET)  # the bench silences the planted bugs' warnings process-wide
    text = out.read_text()
    assert "bench/audit_bench.py --seeds 1" in text
    assert "| honest | 1 | 0/1 |" in text  # an honest run raises no alarm
    assert "| noise_x0 | 1 | 1/1 |" in text  # training without noise is refused
    assert "20 gradient canaries" in text and "60 Adult records, MLP(4)" in text


def test_scale_bench_steps_at_toy_size(tmp_path: Path) -> None:
    from dagster import DagsterInstance, asset, materialize

    from ppml.landing_zone import EVENT_DATE_COLUMN, synthesize_records, write_landing_zone

    scale = _bench("scale_bench")
    window = days(TEST_FIRST_DAY, 2)
    base = synthesize_records(only_days=window)
    doubled = scale.replicated(base, 2)
    assert len(doubled) == 2 * len(base) and doubled["record_id"].nunique() == 2 * base["record_id"].nunique()
    arrivals, day = scale.next_day(doubled)
    assert day == days(TEST_FIRST_DAY, 3)[-1] and set(arrivals[EVENT_DATE_COLUMN]) == {day}
    assert not set(arrivals["record_id"]) & set(doubled["record_id"])

    landing = tmp_path / "landing"
    write_landing_zone(landing, doubled)
    wall, peak, code = scale.run_ppml(tmp_path / "home", landing, "2031-01-01")  # no data that day: refused
    assert code == 2 and wall > 0 and peak > 0

    @asset
    def toy() -> int:
        return 1

    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    with DagsterInstance.local_temp(str(dagster_home)) as instance:
        assert materialize([toy], instance=instance).success
    steps = scale.step_seconds(dagster_home)
    assert set(steps) == {"toy"} and steps["toy"] >= 0

    result = {"factor": 2, "rows": len(doubled), "full": (wall, peak, code), "increment": (wall, peak, code)}
    text = scale.table([{**result, "full_steps": steps, "increment_steps": {"toy": 0.0}}])
    assert f"| 2x (exit 2/2) | {len(doubled):,} |" in text and "| toy | " in text
