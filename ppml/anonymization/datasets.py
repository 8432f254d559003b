"""The ARX benchmark problem on the bundled UCI Adult data, shared by the reference tests and the benchmark."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ppml.anonymization.hierarchy import Hierarchy

__all__ = ["ADULT_QIS", "adult_hierarchies", "load_adult_arx"]

ADULT_DIR = Path(__file__).resolve().parent.parent / "data" / "adult"
#: ARX's column order for its adult.csv benchmark; transformations are reported in this order.
ADULT_QIS = (
    "sex",
    "age",
    "race",
    "marital-status",
    "education",
    "native-country",
    "workclass",
    "occupation",
    "income",
)
_HIERARCHY_FILE = {"income": "salary-class"}


def load_adult_arx(path: str | Path | None = None) -> pd.DataFrame:
    """adult.data without the records holding a '?' (30,162 rows): exactly ARX's adult.csv."""
    source = Path(path) if path is not None else ADULT_DIR / "adult.data.gz"
    df = pd.read_csv(source, sep=", ", engine="python", dtype=str, skipinitialspace=True)
    df = df[~(df == "?").any(axis=1)].reset_index(drop=True)
    return df


def adult_hierarchies(names: tuple[str, ...] = ADULT_QIS) -> dict[str, Hierarchy]:
    folder = ADULT_DIR / "hierarchies"
    return {name: Hierarchy.from_csv(folder / f"{_HIERARCHY_FILE.get(name, name)}.csv") for name in names}
