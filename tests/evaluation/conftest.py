"""Small, fast fixtures on the bundled UCI Adult data for the evaluation tests.

The encoding is deliberately local and minimal (standardised numerics plus one-hot categories) so these tests
do not depend on the preparation engine; a few thousand rows keep every test file quick on a shared box.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ADULT = Path(__file__).resolve().parents[2] / "ppml" / "data" / "adult" / "adult.data.gz"
NUMERIC = ["age", "fnlwgt", "education-num", "capital-gain", "capital-loss", "hours-per-week"]


@dataclass(frozen=True)
class Adult:
    X: np.ndarray  # float32 (n, d)
    y: np.ndarray  # int64 (n,)
    feature_names: tuple[str, ...]
    sex: np.ndarray
    race: np.ndarray

    def rows(self, idx: np.ndarray):
        return split_type()(X=self.X[idx], y=self.y[idx], feature_names=self.feature_names)


def load_adult(n: int) -> Adult:
    """``n`` complete Adult records, shuffled with a fixed seed, numerics standardised, categories one-hot."""
    frame = pd.read_csv(ADULT, sep=",", skipinitialspace=True, na_values="?").dropna()
    frame = frame.sample(n=n, random_state=0).reset_index(drop=True)
    y = (frame.pop("income") == ">50K").to_numpy(np.int64)
    numeric = frame[NUMERIC].to_numpy(np.float64)
    numeric = (numeric - numeric.mean(axis=0)) / numeric.std(axis=0)
    categories = pd.get_dummies(frame.drop(columns=NUMERIC), prefix_sep="=", dtype=np.float32)
    X = np.hstack([numeric.astype(np.float32), categories.to_numpy(np.float32)])
    names = tuple(NUMERIC) + tuple(categories.columns)
    return Adult(X=X, y=y, feature_names=names, sex=frame["sex"].to_numpy(), race=frame["race"].to_numpy())


@pytest.fixture(scope="session")
def adult() -> Adult:
    """6,000 records: enough for every fast test."""
    return load_adult(6000)


@pytest.fixture(scope="session")
def adult_demo() -> Adult:
    """24,000 records: the demo's scale (DP at epsilon = 1 needs tens of thousands of records to be useful)."""
    return load_adult(24000)


def split_type():
    """The contract's TabularSplit, imported late so that collecting the torch-free tests stays quick."""
    from ppml.training import TabularSplit

    return TabularSplit


class SklearnModel:
    """Adapter giving a fitted scikit-learn classifier the contract's ``predict_proba -> P(y = 1)``."""

    def __init__(self, estimator) -> None:
        self.estimator = estimator

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(X)[:, 1]


@pytest.fixture
def as_model():
    """Wrap a fitted scikit-learn classifier as a contract-style model."""
    return SklearnModel
