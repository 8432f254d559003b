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
            # the C parser with skipinitialspace reads the ", "-separated files exactly as the python one, 4x faster
            frame = pd.read_csv(handle, sep=",", skipinitialspace=True, header=0, names=ADULT_COLUMNS, dtype=str)
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

    Every record's identifiers are drawn for the whole data set from seeded generators and then selected, so
    generating a few days (as tests do) yields exactly the records those days hold in the full landing zone.
    """
    adult = read_bundled_adult().drop(columns=["official_split"])
    rng = np.random.default_rng(seed)
    n = len(adult)
    day_offsets = rng.integers(0, days, size=n)
    record_ids = np.array([f"S{value:012x}" for value in rng.integers(0, 2**48, size=n, dtype=np.int64)])
    birthday_offsets = rng.integers(0, 365, size=n)
    event_days = np.datetime64(first_day.isoformat(), "D") + day_offsets
    event_dates = event_days.astype(str)

    selected = np.arange(n) if only_days is None else np.flatnonzero(np.isin(event_dates, only_days))
    identifiers = synthetic_identifiers(np.random.default_rng([seed, 1]), n)
    identifiers.insert(0, "record_id", record_ids)
    ages = adult["age"].to_numpy(dtype="int64")
    years = event_days.astype("datetime64[Y]").astype(int) + 1970 - ages
    births = (years - 1970).astype("datetime64[Y]").astype("datetime64[D]") + birthday_offsets
    identifiers["date_of_birth"] = births.astype(str)
    identifiers[EVENT_DATE_COLUMN] = event_dates
    identifiers = identifiers.iloc[selected].reset_index(drop=True)
    records = pd.concat([identifiers, adult.iloc[selected].reset_index(drop=True)], axis=1)
    return records[LANDING_COLUMNS]


def _digits(rng: np.random.Generator, n: int, width: int) -> np.ndarray:
    """``n`` strings of ``width`` random decimal digits."""
    return np.char.zfill(rng.integers(0, 10**width, size=n).astype(str), width)


def synthetic_identifiers(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Names, SSNs, e-mail addresses, phone numbers, street addresses and ZIP codes for ``n`` people, drawn
    vectorized from Faker's en_US word lists and formats (names by their census frequency): the same shapes as
    Faker's per-record calls, in milliseconds instead of the ~20 s a per-record Faker loop takes."""
    from faker.providers.address.en_US import Provider as Address
    from faker.providers.internet.en_US import Provider as Internet
    from faker.providers.person.en_US import Provider as Person

    def weighted(table: dict[str, float]) -> np.ndarray:
        names = np.array(list(table))
        weights = np.array(list(table.values()), dtype=float)
        return names[rng.choice(len(names), size=n, p=weights / weights.sum())]

    first, last = weighted(Person.first_names), weighted(Person.last_names)
    area = rng.integers(1, 900, size=n)
    area[area == 666] = 667  # never 000, 666 or 9xx (SSA rules, as Faker)
    ssn = [
        f"{a:03d}-{g:02d}-{s:04d}"
        for a, g, s in zip(area, rng.integers(1, 100, n), rng.integers(1, 10000, n), strict=True)
    ]
    domains = np.array(Internet.free_email_domains)[rng.integers(0, len(Internet.free_email_domains), n)]
    suffix = np.array(Address.street_suffixes)[rng.integers(0, len(Address.street_suffixes), n)]
    street_name = np.where(rng.integers(0, 2, n) == 0, weighted(Person.first_names), weighted(Person.last_names))
    building = rng.integers(100, 100000, size=n)
    phone = [
        f"({a}) {b}-{c}" for a, b, c in zip(_digits(rng, n, 3), _digits(rng, n, 3), _digits(rng, n, 4), strict=True)
    ]
    index = np.arange(n)
    return pd.DataFrame(
        {
            "name": np.char.add(np.char.add(first, " "), last),
            "ssn": ssn,
            "email": [f"{f}.{s}{i % 97}@{d}".lower() for f, s, i, d in zip(first, last, index, domains, strict=True)],
            "phone": phone,
            "street_address": [f"{b} {s} {x}" for b, s, x in zip(building, street_name, suffix, strict=True)],
            "zip": np.char.zfill(rng.integers(501, 99951, size=n).astype(str), 5),
        }
    )


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
