"""A GX validation rendered as a page a person reads: real suite, real page, aggregates only, owner-only."""

from __future__ import annotations

import stat
from pathlib import Path

import pandas as pd

from ppml.data_quality_page import write_data_quality_page
from ppml.expectations import cleaned_records_suite


def test_a_failed_validation_renders_as_a_readable_page(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"age": ["20-39", "40-59", None, "Zaphod-Beeblebrox"], "label": [0, 1, 1, 7], "split": ["train"] * 4}
    )
    outcome = cleaned_records_suite(frame, ["age", "label", "split"], "label", "split", n_classes=2)
    assert not outcome.success
    page = write_data_quality_page(outcome, "cleaned_records", "2026-03-14", tmp_path / "reports")
    assert page == tmp_path / "reports" / "data_quality" / "2026-03-14" / f"{outcome.suite}.html"
    html = page.read_text()
    assert f"of {len(outcome.results)} expectations failed" in html
    for result in outcome.results:
        assert result["expectation"] in html
    assert "FAILED" in html and "min_value=1" in html  # the rule, from the suite's own arguments
    assert "Zaphod-Beeblebrox" not in html  # counts, never a record's value
    assert stat.S_IMODE(page.stat().st_mode) == 0o600
    assert stat.S_IMODE(page.parent.stat().st_mode) == 0o700
