"""The bundled raw data: UCI Adult turned into what a regulated organisation really holds.

UCI Adult (Becker & Kohavi 1996, CC BY 4.0) has no direct identifiers and no dates. A hospital's or bank's
landing zone has both, so ppml adds deterministic, seeded synthetic identifiers per person (name, SSN, e-mail,
phone, street address, ZIP, date of birth consistent with the age, record id) and an event date per record, and
lays the records out as one CSV file per day: ``<root>/event_date=YYYY-MM-DD/records.csv``. The identifiers are
fake (Faker) but shaped like real ones, so the de-identification stage has real work to do and tests can prove
that none of them survives it.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from faker import Faker

from ppml.errors import input_error
from ppml.private_files import private_dir

BUNDLED_ADULT_DIR = Path(__file__).resolve().parent / "data" / "adult"
BUNDLED_HIERARCHIES_DIR = BUNDLED_ADULT_DIR / "hierarchies"

ADULT_COLUMNS = [
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    "income",
]
IDENTIFIER_COLUMNS = ["record_id", "name", "ssn", "email", "phone", "street_address", "zip", "date_of_birth"]
EVENT_DATE_COLUMN = "event_date"
LANDING_COLUMNS = [*IDENTIFIER_COLUMNS, EVENT_DATE_COLUMN, *ADULT_COLUMNS]
INTEGER_COLUMNS = ["age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"]

#: The bundled landing zone covers these days; the demo trains as of the last one.
DEFAULT_FIRST_DAY = date(2026, 1, 1)
DEFAULT_DAYS = 120
LANDING_FILE_NAME = "records.csv"


def read_bundled_adult(include_test: bool = True) -> pd.DataFrame:
    """Read the bundled UCI Adult files (``adult.data`` then ``adult.test``) with snake_case column names.

    Missing values stay as the literal ``?`` the source uses; test-set labels lose their trailing period.
    """
    frames = []
    for name in ["adult.data.gz", *(["adult.test.gz"] if include_test else [])]:
        with gzip.open(BUNDLED_ADULT_DIR / name, "rt", encoding="utf-8") as handle:
            frame = pd.read_csv(handle, sep=", ", engine="python", header=0, names=ADULT_COLUMNS, dtype=str)
        frame["income"] = frame["income"].str.rstrip(".")
        frame["official_split"] = "train" if name.startswith("adult.data") else "test"
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    for column in INTEGER_COLUMNS:
        data[column] = data[column].astype("int64")
    return data


def landing_file(root: Path, day: date | str) -> Path:
    return Path(root) / f"{EVENT_DATE_COLUMN}={day}" / LANDING_FILE_NAME


def landing_days(first_day: date = DEFAULT_FIRST_DAY, days: int = DEFAULT_DAYS) -> list[date]:
    return [first_day + timedelta(days=offset) for offset in range(days)]


@dataclass(frozen=True)
class LandingZoneSummary:
    root: Path
    days: int
    records: int
    first_day: date
    last_day: date


def synthesize_records(
    seed: int = 20260101,
    first_day: date = DEFAULT_FIRST_DAY,
    days: int = DEFAULT_DAYS,
    only_days: list[str] | None = None,
) -> pd.DataFrame:
    """Adult records with synthetic direct identifiers and event dates.

    Every record's identifiers depend only on ``(seed, record index)``, so generating a few days (as tests do)
    yields exactly the records those days hold in the full landing zone.
    """
    adult = read_bundled_adult().drop(columns=["official_split"])
    rng = np.random.default_rng(seed)
    n = len(adult)
    day_offsets = rng.integers(0, days, size=n)
    record_ids = np.array([f"S{value:012x}" for value in rng.integers(0, 2**48, size=n, dtype=np.int64)])
    birthday_offsets = rng.integers(0, 365, size=n)
    event_dates = np.array([(first_day + timedelta(days=int(offset))).isoformat() for offset in day_offsets])

    selected = np.arange(n) if only_days is None else np.flatnonzero(np.isin(event_dates, only_days))
    fake = Faker("en_US")
    rows = []
    for index in selected:
        fake.seed_instance(seed * 1_000_003 + int(index))
        first, last = fake.first_name(), fake.last_name()
        age = int(adult.at[index, "age"])
        event = date.fromisoformat(event_dates[index])
        birth = date(event.year - age, 1, 1) + timedelta(days=int(birthday_offsets[index]))
        rows.append(
            {
                "record_id": record_ids[index],
                "name": f"{first} {last}",
                "ssn": fake.ssn(),
                "email": f"{first}.{last}{index % 97}@{fake.free_email_domain()}".lower(),
                "phone": fake.numerify("(###) ###-####"),
                "street_address": fake.street_address(),
                "zip": fake.zipcode(),
                "date_of_birth": birth.isoformat(),
                EVENT_DATE_COLUMN: event.isoformat(),
            }
        )
    identifiers = pd.DataFrame(rows, columns=[*IDENTIFIER_COLUMNS, EVENT_DATE_COLUMN])
    records = pd.concat([identifiers, adult.iloc[selected].reset_index(drop=True)], axis=1)
    return records[LANDING_COLUMNS]


def write_landing_zone(
    root: Path,
    records: pd.DataFrame,
) -> LandingZoneSummary:
    """Write one CSV per event date; each file is written to a temporary name first, then renamed."""
    root = Path(root)
    written = 0
    for day, group in records.groupby(EVENT_DATE_COLUMN, sort=True):
        target = landing_file(root, day)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        group.to_csv(buffer, index=False)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
        os.replace(temporary, target)
        written += len(group)
    days = sorted(records[EVENT_DATE_COLUMN].unique())
    return LandingZoneSummary(
        root=root,
        days=len(days),
        records=written,
        first_day=date.fromisoformat(days[0]),
        last_day=date.fromisoformat(days[-1]),
    )


#: Written by the generator into a landing zone it created; lists the days it generated there.
BUNDLED_MARKER = ".ppml-bundled.json"


def ensure_bundled_landing_zone(
    root: Path, seed: int = 20260101, only_days: list[str] | None = None
) -> LandingZoneSummary | None:
    """Create the bundled landing zone (or some of its days) under ``root`` unless those files exist.

    The generator only ever writes into a landing zone it created itself (recorded in a marker file): a user's
    landing zone is never touched, and a generated day file that has since disappeared is an error rather than
    silently regenerated, because a pipeline must never train on data nobody delivered.
    """
    root = Path(root)
    wanted = only_days or [day.isoformat() for day in landing_days()]
    marker = root / BUNDLED_MARKER
    generated: list[str] = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else []
    if not marker.is_file() and root.is_dir() and any(root.iterdir()):
        return None  # someone else's landing zone: read it as it is, never add to it
    missing = [day for day in wanted if not landing_file(root, day).is_file()]
    deleted = sorted(set(missing) & set(generated))
    if deleted:
        raise input_error(
            str(landing_file(root, deleted[0])),
            "(file)",
            f"{len(deleted)} landing files of the bundled data are missing (first: {deleted[0]})",
            f"restore them, or delete {root} (make clean) to regenerate the whole bundled landing zone",
        )
    if not missing:
        return None
    private_dir(root)
    records = synthesize_records(seed=seed, only_days=missing)
    summary = write_landing_zone(root, records)
    written = set(records[EVENT_DATE_COLUMN].unique())
    marker.write_text(json.dumps(sorted({*generated, *written})), encoding="utf-8")
    return summary
