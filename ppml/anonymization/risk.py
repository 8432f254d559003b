"""Sample-based re-identification risk of a data set, from its equivalence-class sizes.

The released sample is treated as the population (no population table is known), as ARX does for its
sample-based estimates, so journalist risk equals prosecutor risk; suppressed records are not released and do
not count. For a record in a class of size f: prosecutor/journalist risk 1/f; marketer risk is the expected
share of records re-identified when every record is matched, i.e. classes / records (El Emam 2013).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

__all__ = ["RiskProfile", "risk_from_frame", "risk_from_sizes"]


@dataclass(frozen=True)
class RiskProfile:
    records: int
    equivalence_classes: int
    prosecutor_risk_highest: float
    prosecutor_risk_average: float
    journalist_risk_highest: float
    journalist_risk_average: float
    marketer_risk: float
    risk_threshold: float
    records_at_risk: float  # share of records whose prosecutor risk exceeds the threshold
    sample_uniqueness: float  # share of records that are unique on the quasi-identifiers

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def risk_from_sizes(sizes: np.ndarray, threshold: float = 0.2) -> RiskProfile:
    """Risk profile of a data set whose equivalence classes have these sizes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    sizes = sizes[sizes > 0]
    records = int(sizes.sum())
    if records == 0:
        return RiskProfile(0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, threshold, 0.0, 0.0)
    classes = len(sizes)
    highest = 1.0 / float(sizes.min())
    average = classes / records
    at_risk = float(sizes[1.0 / sizes > threshold].sum()) / records
    unique = float(sizes[sizes == 1].sum()) / records
    return RiskProfile(records, classes, highest, average, highest, average, average, threshold, at_risk, unique)


def risk_from_frame(df: pd.DataFrame, quasi_identifiers: list[str], threshold: float = 0.2) -> RiskProfile:
    """Risk profile of a table as given (e.g. a released file), grouping on its quasi-identifier columns."""
    if df.empty:
        return risk_from_sizes(np.zeros(0, dtype=np.int64), threshold)
    sizes = df.groupby(list(quasi_identifiers), dropna=False, sort=False).size().to_numpy()
    return risk_from_sizes(sizes, threshold)
