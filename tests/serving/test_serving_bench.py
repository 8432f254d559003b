"""bench/serving_bench.py on a toy size (seconds), so that the benchmark cannot rot: the registered version of the
serving tests, 1 and 2 clients, every answered row counted in the prediction log."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.serving.serving_support import Registered

pytestmark = pytest.mark.slow  # a server start (~10 s) on top of the shared registered version

REPO = Path(__file__).resolve().parents[2]


def test_serving_bench_smoke(registered: Registered, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("serving_bench", REPO / "bench" / "serving_bench.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serving.md"
    arguments = ["--policy", str(registered.policy), "--requests", "20", "--clients", "1", "2", "--out", str(out)]
    result = bench.main(arguments)
    assert [(r["mode"], r["clients"]) for r in result["rows"]] == [
        ("single", 1),
        ("batch", 1),
        ("single", 2),
        ("batch", 2),
    ]
    assert all(r["failures"] == 0 and r["requests"] >= 2 and r["p99_ms"] >= r["p50_ms"] > 0 for r in result["rows"])
    assert result["logged"] == result["sent_rows"] > 0
    text = out.read_text()
    assert "| single | 2 | 1 |" in text and "none lost" in text and "load average" in text
