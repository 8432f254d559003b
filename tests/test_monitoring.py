"""Drift monitoring: PSI is zero for identical data, large for a shifted population."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ppml.errors import PPMLError
from ppml.monitoring import build_profile, drift_against, population_stability_index


def _frame(seed: int, shift: float = 0.0, n: int = 4000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": (rng.normal(40 + shift, 10, n)).round().astype(int),
            "sex": rng.choice(["Female", "Male"], n, p=[0.33 + shift / 100, 0.67 - shift / 100]),
        }
    )


def test_psi_known_values() -> None:
    assert population_stability_index({"a": 50, "b": 50}, {"a": 50, "b": 50}) == 0
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert population_stability_index({"a": 5, "b": 5}, {"a": 9, "b": 1}) == pytest.approx(expected)


def test_same_population_does_not_drift_but_a_shift_does() -> None:
    profile = build_profile(_frame(0), ["sex"], ["age"])
    stable = drift_against(profile, _frame(1), threshold=0.2)
    assert not stable.drifted and stable.max_psi < 0.05
    shifted = drift_against(profile, _frame(2, shift=15), threshold=0.2)
    assert shifted.drifted and "age" in shifted.drifted_features


def test_missing_feature_and_empty_partition_are_errors() -> None:
    profile = build_profile(_frame(0), ["sex"], ["age"])
    with pytest.raises(PPMLError, match="field 'sex': missing"):
        drift_against(profile, _frame(1).drop(columns=["sex"]), 0.2)
    with pytest.raises(PPMLError, match="no records"):
        drift_against(profile, _frame(1).iloc[:0], 0.2)
