"""Fixtures for the anonymization tests: the ARX benchmark problem on the bundled Adult data."""

from __future__ import annotations

import pandas as pd
import pytest

from ppml.anonymization import Hierarchy
from ppml.anonymization.datasets import adult_hierarchies, load_adult_arx


@pytest.fixture(scope="session")
def adult() -> pd.DataFrame:
    return load_adult_arx()


@pytest.fixture(scope="session")
def adult_h() -> dict[str, Hierarchy]:
    return adult_hierarchies()
