"""A retrain keeps the previous release's generalization only while it is valid on the new window and nearly
optimal (ppml.anonymization.stability); otherwise it releases the new optimum. Checked on overlapping Adult
windows for many previous transformations, each against an independent verification of the release."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from ppml.anonymization import AnonymizationConfig, anonymize, verify_release

QIS = ["age", "sex", "race", "marital-status", "education"]


@pytest.fixture(scope="module")
def windows(adult):  # type: ignore[no-untyped-def]
    """Two 8,000-record windows sharing 7,000 records (a week of arrivals replaced), like weekly retrains."""
    rows = np.random.default_rng(7).permutation(len(adult))
    first, second = adult.iloc[rows[:8000]], adult.iloc[rows[1000:9000]]
    return first.reset_index(drop=True), second.reset_index(drop=True)


def _config(adult_h, **overrides) -> AnonymizationConfig:  # type: ignore[no-untyped-def]
    return AnonymizationConfig({q: adult_h[q] for q in QIS}, k=10, suppression_limit=0.02, **overrides)


def test_the_previous_transformation_is_kept_only_when_valid_and_within_tolerance(windows, adult_h) -> None:
    _, second = windows
    optimum = anonymize(second, _config(adult_h))
    heights = [adult_h[q].height for q in QIS]
    rng = np.random.default_rng(3)
    # the optimum's neighbours (one level up or down in one QI: nearly optimal, valid or not) and random nodes
    neighbours = [
        {**optimum.transformation, q: optimum.transformation[q] + step}
        for q, h in zip(QIS, heights, strict=True)
        for step in (-1, 1)
        if 0 <= optimum.transformation[q] + step < h
    ]
    randoms = [{q: int(rng.integers(0, h)) for q, h in zip(QIS, heights, strict=True)} for _ in range(4)]
    kept = refused = 0
    for previous in neighbours + randoms:
        result = anonymize(second, _config(adult_h, previous_transformation=previous, previous_tolerance=0.5))
        assert result.stability is not None and result.stability["previous"] == previous
        if result.stability["kept"]:
            kept += 1
            assert result.transformation == previous
            assert verify_release(result.data, _config(adult_h), original=second) == []  # k and suppression hold
            assert result.quality["value"] <= optimum.quality["value"] * 1.5 + 1e-12
        else:
            refused += 1
            assert result.transformation == optimum.transformation  # the new optimum, unchanged
            loses_too_much = result.stability.get("previous_value", -1) > optimum.quality["value"] * 1.5
            assert loses_too_much or "no longer satisfies" in result.stability["reason"]
    assert kept and refused  # both branches ran


def test_last_weeks_optimum_is_kept_on_an_overlapping_window(windows, adult_h) -> None:
    first, second = windows
    last_week = anonymize(first, _config(adult_h))
    this_week = anonymize(
        second, _config(adult_h, previous_transformation=last_week.transformation, previous_tolerance=0.1)
    )
    fresh = anonymize(second, _config(adult_h))
    assert this_week.stability["optimum"] == fresh.transformation
    if this_week.stability["kept"]:
        assert this_week.transformation == last_week.transformation
        assert verify_release(this_week.data, _config(adult_h), original=second) == []
    else:  # allowed, but then the reason must hold
        assert this_week.transformation == fresh.transformation


def test_a_previous_release_over_other_quasi_identifiers_is_ignored(windows, adult_h) -> None:
    _, second = windows
    config = _config(adult_h, previous_transformation={"age": 1, "sex": 0}, previous_tolerance=1.0)
    result = anonymize(second, config)
    assert result.stability["kept"] is False and "other quasi-identifiers" in result.stability["reason"]
    assert result.transformation == anonymize(second, replace(config, previous_transformation=None)).transformation
