"""The federated variant of the bundled data: the landing zone's records split into non-IID sites.

Real federations are non-IID: a hospital in one region or a bank serving one trade sees a different mix of people
and labels than the pool. The bundled Adult records are assigned to sites by occupation group (income depends
strongly on occupation, so the label rate differs from site to site), with a seeded 10 % spill-over so that every
site still sees a few records of every occupation, and the groups differ in size, so the sites do too. Each site
gets its own landing zone in the bundled layout (one CSV per event date), written by the same generator as the
central one, so the same records and identifiers appear as in the central pipeline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ppml.errors import input_error
from ppml.landing_zone import EVENT_DATE_COLUMN, synthesize_records, write_landing_zone
from ppml.private_files import private_dir, tighten_tree

#: Occupation groups, in the order they are dealt to sites (group i goes to site i mod n).
OCCUPATION_GROUPS: tuple[tuple[str, ...], ...] = (
    ("Exec-managerial", "Prof-specialty"),
    ("Craft-repair", "Machine-op-inspct", "Transport-moving"),
    ("Adm-clerical", "Sales", "Tech-support"),
    ("Other-service", "Handlers-cleaners", "Farming-fishing", "Priv-house-serv"),
    ("Protective-serv", "Armed-Forces", "?"),
)
SPILL_SHARE = 0.10
MIN_SITES, MAX_SITES = 2, 5


@dataclass(frozen=True)
class SiteSplit:
    """How many records each site got and its positive-label rate (aggregates only)."""

    records: dict[str, int]
    positive_rate: dict[str, float]

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"records": dict(self.records), "positive_rate": dict(self.positive_rate)}


def _stable_unit(values: pd.Series, salt: str) -> np.ndarray:
    """A uniform number in [0, 1) per value, reproducible across runs and machines (no Python hash seed)."""
    digests = [hashlib.sha256(f"{salt}\x1f{v}".encode()).digest()[:8] for v in values.astype(str)]
    return np.array([int.from_bytes(d, "big") / 2**64 for d in digests])


def assign_sites(records: pd.DataFrame, site_names: list[str], subject_column: str = "record_id") -> pd.Series:
    """The site of every record: its occupation group's site, or (10 %) a site drawn from its subject id.

    The draw depends only on the subject id, so one person always lands at one site (the sites are disjoint in
    people, which the per-site ledger scopes rely on).
    """
    if not MIN_SITES <= len(site_names) <= MAX_SITES:
        raise input_error(
            "federated split", "sites", f"{len(site_names)} sites", f"use {MIN_SITES} to {MAX_SITES} sites"
        )
    group_site = {
        occupation: site_names[index % len(site_names)]
        for index, group in enumerate(OCCUPATION_GROUPS)
        for occupation in group
    }
    home = records["occupation"].astype(str).str.strip().map(group_site).fillna(site_names[-1])
    spill = _stable_unit(records[subject_column], "spill") < SPILL_SHARE
    drawn = np.floor(_stable_unit(records[subject_column], "site") * len(site_names)).astype(int)
    other = pd.Series(np.asarray(site_names, dtype=object)[drawn], index=records.index)
    return home.where(~spill, other)


def split_summary(records: pd.DataFrame, sites: pd.Series, label: str = "income", positive: str = ">50K") -> SiteSplit:
    positive_mask = records[label].astype(str).str.strip().str.rstrip(".") == positive
    counts = sites.value_counts()
    rates = positive_mask.groupby(sites).mean()
    return SiteSplit(
        records={str(k): int(v) for k, v in counts.sort_index().items()},
        positive_rate={str(k): round(float(v), 4) for k, v in rates.sort_index().items()},
    )


def write_federated_landing_zones(
    root: Path, site_names: list[str], *, seed: int = 20260101, only_days: list[str] | None = None
) -> SiteSplit:
    """Write ``root/<site>/event_date=.../records.csv`` for every site (owner-only folders), reproducibly."""
    records = synthesize_records(seed=seed, only_days=only_days)
    sites = assign_sites(records, site_names)
    for name in site_names:
        site_root = private_dir(Path(root) / name)
        part = records[sites == name]
        if part.empty:
            raise input_error(str(site_root), "sites", "no records were assigned to this site", "use more days")
        write_landing_zone(site_root, part.sort_values(EVENT_DATE_COLUMN))
        tighten_tree(site_root)
    return split_summary(records, sites)
