"""Smoke test of the ARX side of bench/anonymization_bench.py --arx (issue 15): the Java harness compiles against
ARX built from source, and ARX's optimum equals ppml's on one small configuration (k=50, no suppression: ARX
checks under a hundred transformations, so one JVM run takes seconds).

When ARX's source is on the machine (``ARX_SRC`` or the fetched mirror) and not compiled yet, the test compiles it
as ``bench/anonymization_bench.py --arx`` does (about 10 s on idle cores, once: the classes are kept under
bench/arx/build/); without the source it says so and skips.
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
    classpath = harness.build(source, log=lambda *_: None)  # compiles ARX once per source revision
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
