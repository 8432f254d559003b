"""Smoke test of the ARX side of bench/anonymization_bench.py --arx (issue 15): the Java harness compiles against
ARX built from source, and ARX's optimum equals ppml's on one small configuration (k=50, no suppression: ARX
checks under a hundred transformations, so one JVM run takes seconds).

Compiling ARX itself takes about a minute, over this test's budget: the test uses ARX's classes when
``bench/anonymization_bench.py --arx`` (or :func:`arx_harness.build`) has compiled them, and says so when not.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

from ppml.anonymization import AnonymizationConfig, Hierarchy, anonymize
from ppml.anonymization.datasets import ADULT_QIS

REPO_ROOT = Path(__file__).resolve().parents[2]


def _harness() -> ModuleType:
    spec = importlib.util.spec_from_file_location("arx_harness", REPO_ROOT / "bench" / "arx_harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arx_harness_agrees_with_ppml(adult: pd.DataFrame, adult_h: dict[str, Hierarchy]) -> None:
    if shutil.which("javac") is None or shutil.which("java") is None:
        pytest.skip("javac/java not installed: the ARX harness cannot be compiled")
    harness = _harness()
    source = harness.find_source()
    if source is None:
        pytest.skip("ARX's source not found: set ARX_SRC to a checkout or to github:arx-deidentifier/arx's git dir")
    if not harness.is_built(source):
        pytest.skip("ARX not compiled yet (about a minute): run bench/anonymization_bench.py --arx once")
    classpath = harness.build(source)
    data = harness.write_data(adult, list(ADULT_QIS))
    folder = REPO_ROOT / "ppml" / "data" / "adult" / "hierarchies"
    files = {name: folder / f"{'salary-class' if name == 'income' else name}.csv" for name in ADULT_QIS}
    session = harness.ArxSession(classpath, data, files, warmups=0, runs=1)
    try:
        answer = session.measure(50, 0.0)
    finally:
        session.close()
    result = anonymize(adult, AnonymizationConfig(adult_h, k=50, suppression_limit=0.0))
    assert answer["median_s"] > 0
    assert harness.agrees(result.transformation_levels, result.quality["value"], list(ADULT_QIS), answer), answer
