"""Lifecycle step 7b: drift monitoring with the population stability index (PSI).

A model's privacy and utility evidence holds for the population it was evaluated on. When a new day's records
look different from the training window, the evidence is stale: monitoring compares per-feature distributions
of the newest raw partition with a reference profile of the training window and asks for re-evaluation when
the largest PSI passes the policy's threshold (0.1 = moderate, 0.2 = significant shift, by common practice).

The reference profile holds only category and bin counts of the training window, never records.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ppml.errors import PPMLError


@dataclass
class FeatureProfile:
    kind: str  # "categorical" or "numeric"
    counts: dict[str, int]
    edges: list[float] = field(default_factory=list)


@dataclass
class DriftReport:
    psi: dict[str, float]
    threshold: float
    rows_reference: int
    rows_current: int

    @property
    def max_psi(self) -> float:
        return max(self.psi.values(), default=0.0)

    @property
    def drifted_features(self) -> list[str]:
        return sorted(name for name, value in self.psi.items() if value > self.threshold)

    @property
    def drifted(self) -> bool:
        return bool(self.drifted_features)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "max_psi": self.max_psi, "drifted_features": self.drifted_features}


def _numeric_edges(values: pd.Series, bins: int) -> list[float]:
    quantiles = np.quantile(values.astype(float), np.linspace(0, 1, bins + 1)[1:-1])
    return [float(edge) for edge in np.unique(quantiles)]


def _bin_labels(values: pd.Series, edges: list[float]) -> pd.Series:
    codes = np.searchsorted(np.asarray(edges), values.astype(float).to_numpy(), side="right")
    return pd.Series(codes.astype(str), index=values.index)


def build_profile(frame: pd.DataFrame, categorical: list[str], numeric: list[str], bins: int = 10) -> dict:
    """Counts per category and per reference-decile bin; the JSON-serialisable training reference."""
    if frame.empty:
        raise PPMLError("training window: field '(rows)': no records to profile; fix: materialize the window")
    profile: dict[str, dict] = {"rows": len(frame), "features": {}}
    for column in categorical:
        counts = frame[column].astype(str).value_counts()
        profile["features"][column] = asdict(FeatureProfile("categorical", {k: int(v) for k, v in counts.items()}))
    for column in numeric:
        edges = _numeric_edges(frame[column], bins)
        counts = _bin_labels(frame[column], edges).value_counts()
        profile["features"][column] = asdict(
            FeatureProfile("numeric", {k: int(v) for k, v in counts.items()}, edges=edges)
        )
    return profile


def population_stability_index(expected: dict[str, int], actual: dict[str, int], floor: float = 1e-4) -> float:
    """PSI = sum((a - e) * ln(a / e)) over bins, with empty bins floored so that the index stays finite."""
    keys = sorted(set(expected) | set(actual))
    e = np.array([expected.get(key, 0) for key in keys], dtype=float)
    a = np.array([actual.get(key, 0) for key in keys], dtype=float)
    if e.sum() == 0 or a.sum() == 0:
        return 0.0
    e = np.clip(e / e.sum(), floor, None)
    a = np.clip(a / a.sum(), floor, None)
    return float(np.sum((a - e) * np.log(a / e)))


def drift_against(profile: dict, current: pd.DataFrame, threshold: float) -> DriftReport:
    """Compare a new partition with the training reference, feature by feature."""
    if current.empty:
        raise PPMLError("newest partition: field '(rows)': no records; fix: collect a non-empty partition")
    psi = {}
    for column, stored in profile["features"].items():
        if column not in current.columns:
            raise PPMLError(
                f"newest partition: field '{column}': missing, but the training reference has it; "
                "fix: restore the column at the source or retrain"
            )
        if stored["kind"] == "numeric":
            counts = _bin_labels(current[column], stored["edges"]).value_counts()
        else:
            counts = current[column].astype(str).value_counts()
        psi[column] = round(population_stability_index(stored["counts"], {k: int(v) for k, v in counts.items()}), 6)
    return DriftReport(psi=psi, threshold=threshold, rows_reference=int(profile["rows"]), rows_current=len(current))
