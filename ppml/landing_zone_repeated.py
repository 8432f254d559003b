"""A variant of the bundled landing zone in which data subjects repeat: 1-20 records each, spread over time.

The bundled landing zone (:mod:`ppml.landing_zone`) holds one record per person, which is what a record-level
guarantee assumes. Real landing data repeat people -- a patient has many encounters, a customer many
transactions -- and that is what ``privacy.privacy_unit: subject`` is for. Here every UCI Adult row is a *person*:
the person's identifiers (same ``record_id`` subject id, name, SSN, ...) and attributes are the same in each of
their records, ``hours_per_week`` varies a little from visit to visit, and the records fall on distinct days drawn
uniformly over the landing zone's days. The number of records per person is 1 + a geometric draw, capped at 20
(mean about 3.3; a long tail up to 20); a third of the Adult rows are people, so the variant holds about as many
records as the bundled zone (~54k over 120 days). Deterministic in the seed; generating only some days yields exactly
those days' records of the full variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from faker import Faker

from ppml.landing_zone import (
    DEFAULT_DAYS,
    DEFAULT_FIRST_DAY,
    EVENT_DATE_COLUMN,
    IDENTIFIER_COLUMNS,
    LANDING_COLUMNS,
    LandingZoneSummary,
    read_bundled_adult,
    write_landing_zone,
)

MAX_RECORDS_PER_SUBJECT = 20
#: The variant's seed: which Adult rows are its people (bench/weekly_bench.py holds out the others).
DEFAULT_SEED = 20260101


@dataclass(frozen=True)
class RepeatedSubjectsPlan:
    """Which Adult row is which person, how many records each has and on which days (no identifiers yet)."""

    base_rows: np.ndarray  # per record: the Adult row of its person
    subjects: np.ndarray  # per record: the person's index
    day_offsets: np.ndarray  # per record: days after the first day
    hours_delta: np.ndarray  # per record: change of hours_per_week on that visit


def plan_repeated_subjects(
    n_rows: int, seed: int, days: int, max_records: int = MAX_RECORDS_PER_SUBJECT
) -> RepeatedSubjectsPlan:
    """A third of the ``n_rows`` Adult rows become people (about as many records as the bundled zone), each
    with 1..max_records records (at most ``days``) on distinct days; from the seed alone."""
    rng = np.random.default_rng(seed)
    people = rng.permutation(n_rows)[: max(n_rows // 3, 1)]
    n_people = len(people)
    cap = min(max_records, days)
    counts = np.minimum(rng.geometric(0.3, size=n_people), cap)
    subjects = np.repeat(np.arange(n_people), counts)
    offsets = np.concatenate([np.sort(rng.choice(days, size=int(c), replace=False)) for c in counts])
    hours = rng.integers(-5, 6, size=len(subjects))
    hours[np.r_[0, np.cumsum(counts)[:-1]]] = 0  # the first visit is the person's own Adult row
    return RepeatedSubjectsPlan(people[subjects], subjects, offsets, hours)


def synthesize_repeated_subject_records(
    seed: int = DEFAULT_SEED,
    first_day: date = DEFAULT_FIRST_DAY,
    days: int = DEFAULT_DAYS,
    only_days: list[str] | None = None,
    max_records: int = MAX_RECORDS_PER_SUBJECT,
) -> pd.DataFrame:
    """Landing records (same columns as the bundled zone) in which every person has 1-``max_records`` records."""
    adult = read_bundled_adult().drop(columns=["official_split"])
    plan = plan_repeated_subjects(len(adult), seed, days, max_records)
    events = np.array([(first_day + timedelta(days=int(o))).isoformat() for o in plan.day_offsets])
    selected = np.arange(len(events)) if only_days is None else np.flatnonzero(np.isin(events, only_days))
    id_rng = np.random.default_rng(seed + 1)
    subject_ids = np.array([f"S{v:012x}" for v in id_rng.integers(0, 2**48, size=len(adult), dtype=np.int64)])
    birthdays = id_rng.integers(0, 365, size=len(adult))
    people = {int(p): int(row) for p, row in zip(plan.subjects[selected], plan.base_rows[selected], strict=True)}
    fake = Faker("en_US")
    identities = {
        p: _identity(fake, seed, p, int(adult.at[row, "age"]), first_day, birthdays) for p, row in people.items()
    }
    rows = [
        {"record_id": subject_ids[plan.subjects[i]], **identities[int(plan.subjects[i])], EVENT_DATE_COLUMN: events[i]}
        for i in selected
    ]
    identifiers = pd.DataFrame(rows, columns=[*IDENTIFIER_COLUMNS, EVENT_DATE_COLUMN])
    attributes = adult.iloc[plan.base_rows[selected]].reset_index(drop=True)
    hours = attributes["hours_per_week"].to_numpy() + plan.hours_delta[selected]
    attributes["hours_per_week"] = np.clip(hours, 1, 99).astype("int64")
    records = pd.concat([identifiers, attributes], axis=1)
    return records[LANDING_COLUMNS]


def write_repeated_subject_landing_zone(
    root: Path, seed: int = DEFAULT_SEED, days: int = DEFAULT_DAYS
) -> LandingZoneSummary:
    """Write the variant as one CSV per day under ``root`` (the layout of the bundled landing zone)."""
    return write_landing_zone(Path(root), synthesize_repeated_subject_records(seed=seed, days=days))


def _identity(fake: Faker, seed: int, person: int, age: int, first_day: date, birthdays: np.ndarray) -> dict[str, str]:
    """The person's direct identifiers: the same in every record of theirs (Faker seeded per person)."""
    fake.seed_instance(seed * 1_000_033 + person)
    first, last = fake.first_name(), fake.last_name()
    birth = date(first_day.year - age, 1, 1) + timedelta(days=int(birthdays[person]))
    return {
        "name": f"{first} {last}",
        "ssn": fake.ssn(),
        "email": f"{first}.{last}{person % 97}@{fake.free_email_domain()}".lower(),
        "phone": fake.numerify("(###) ###-####"),
        "street_address": fake.street_address(),
        "zip": fake.zipcode(),
        "date_of_birth": birth.isoformat(),
    }
