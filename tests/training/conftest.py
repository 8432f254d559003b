"""Small synthetic data for the training tests.

PostgreSQL: the ledger tests use the root ``tests/conftest.py`` fixtures ``postgres_server`` / ``postgres_database``
(a fresh uniquely named database per test, dropped afterwards; skipped only when the server is unreachable and CI is
not "true", a failure under CI=true) and are marked ``@pytest.mark.postgres``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ppml.training import TabularSplit

warnings.filterwarnings("ignore", message="Secure RNG turned off")


def make_splits(
    n_train: int = 1200, n_validation: int = 400, n_features: int = 12, seed: int = 0
) -> tuple[TabularSplit, TabularSplit]:
    """A linearly separable-ish binary problem: quick to learn, so utility assertions are stable."""
    rng = np.random.default_rng(seed)
    n = n_train + n_validation
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    weights = rng.normal(size=n_features)
    y = (X @ weights + 0.5 * rng.normal(size=n) > 0).astype(np.int64)
    names = tuple(f"f{i}" for i in range(n_features))
    return (
        TabularSplit(X[:n_train], y[:n_train], names, "synthetic/train"),
        TabularSplit(X[n_train:], y[n_train:], names, "synthetic/validation"),
    )


@pytest.fixture(scope="session")
def splits() -> tuple[TabularSplit, TabularSplit]:
    return make_splits()
