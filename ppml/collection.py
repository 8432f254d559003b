"""Lifecycle step 2a: collection of one daily partition from a record source, with erasure requests honoured.

Two sources are supported so that users can point ppml at their own data: a landing zone of daily CSV files
(what file drops and data lakes look like) and a SQL table read by event date (what an operational database
looks like), the latter through SQLAlchemy so any dialect with a driver works; PostgreSQL is tested.

Every partition is validated before anything is written downstream: a missing file, a corrupt file, an empty
file, a missing column or a value of the wrong type each raise one line naming the file, the field and the fix.
Records of data subjects who asked for erasure (GDPR Art. 17) or objected (Art. 21) are removed here, before
any processing, and only their count is reported.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd
import sqlalchemy as sa

from ppml.errors import input_error
from ppml.landing_zone import landing_file
from ppml.policy import Policy


class RecordReader(Protocol):
    """Reads the raw records of one event date, as strings, and says where they came from."""

    def read_day(self, day: str) -> tuple[pd.DataFrame, str]: ...


@dataclass(frozen=True)
class LandingZoneReader:
    """Daily CSV files at ``<root>/event_date=YYYY-MM-DD/records.csv``."""

    root: Path

    def read_day(self, day: str) -> tuple[pd.DataFrame, str]:
        path = landing_file(self.root, day)
        if not path.is_file():
            raise input_error(
                str(path),
                "(file)",
                f"no landing file for partition {day}",
                "deliver the day's file, or leave the day out of the backfill",
            )
        raw = path.read_bytes()
        if b"\x00" in raw[:65536]:
            raise input_error(
                str(path), "(file)", "the file is binary or corrupt, not CSV", "re-export it as UTF-8 CSV"
            )
        try:
            text = raw.decode("utf-8")
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except UnicodeDecodeError:
            raise input_error(str(path), "(file)", "the file is not UTF-8 text", "re-export it as UTF-8 CSV") from None
        except (pd.errors.ParserError, csv.Error) as exc:
            problem = str(exc).splitlines()[0]
            raise input_error(str(path), "(file)", f"corrupt CSV ({problem})", "re-export the file") from None
        except pd.errors.EmptyDataError:
            raise input_error(str(path), "(file)", "the file is empty (no header)", "re-deliver the file") from None
        return frame, str(path)


@dataclass(frozen=True)
class SqlTableReader:
    """A table (or view) of an SQL database, filtered by the event-date column; values are read as text."""

    url: str
    table: str
    event_date_column: str = "event_date"
    schema: str | None = None

    def read_day(self, day: str) -> tuple[pd.DataFrame, str]:
        try:
            engine = sa.create_engine(self.url)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ValueError) as exc:
            raise input_error(
                f"SQL source#{self.table}",
                "url",
                f"not a usable SQLAlchemy URL ({type(exc).__name__})",
                "write it as dialect+driver://user@host:port/database with an installed driver",
            ) from None
        source = f"{engine.url.render_as_string(hide_password=True)}#{self.table}"
        try:
            with engine.connect() as connection:
                table = sa.Table(self.table, sa.MetaData(), schema=self.schema, autoload_with=connection)
                if self.event_date_column not in table.c:
                    raise input_error(
                        source,
                        self.event_date_column,
                        "the table has no event-date column",
                        "point event_date_column at the table's date column",
                    )
                date_column = table.c[self.event_date_column]
                query = sa.select(table).where(sa.cast(date_column, sa.String) == day)
                result = connection.execute(query)
                rows = result.fetchall()
                frame = pd.DataFrame(rows, columns=list(result.keys()))
        except sa.exc.NoSuchTableError:
            raise input_error(
                source, "table", f"table '{self.table}' does not exist", "create it or fix the name"
            ) from None
        except sa.exc.OperationalError as exc:
            reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
            raise input_error(source, "url", f"cannot connect ({reason})", "check the database URL") from None
        finally:
            engine.dispose()
        frame = frame.astype(object).where(frame.notna(), "").astype(str)
        return frame, source


def load_records_into_table(url: str, table: str, records: pd.DataFrame, replace: bool = False) -> int:
    """Copy records into an SQL table (used to seed a database source from the landing zone)."""
    engine = sa.create_engine(url)
    try:
        records.to_sql(table, engine, if_exists="replace" if replace else "append", index=False)
    finally:
        engine.dispose()
    return len(records)


@dataclass(frozen=True)
class CollectedPartition:
    records: pd.DataFrame
    source: str
    rows_read: int
    rows_excluded_by_erasure: int
    content_sha256: str
    rows_dropped_as_duplicates: int = 0
    rows_dropped_missing: int = 0  # records whose numeric cell was empty and the policy said "drop"


def required_columns(policy: Policy) -> list[str]:
    """Every column the policy names, once each, in collection order."""
    return list(dict.fromkeys(c for names in policy.schema_.columns_by_role().values() for c in names))


def validate_and_type(frame: pd.DataFrame, source: str, policy: Policy, day: str) -> pd.DataFrame:
    """Check columns, emptiness, types and the event date of one partition; return the typed frame."""
    roles = policy.schema_
    if frame.empty:
        raise input_error(source, "(rows)", "the partition has no records", "deliver a file with at least one record")
    columns = required_columns(policy)
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        role = next(f for f, names in policy.schema_.columns_by_role().items() if missing[0] in names)
        raise input_error(
            source,
            missing[0],
            f"required column missing, named by the policy's {role} ({len(missing)} missing in all)",
            "add the column to the data, or correct the column name in the policy",
        )
    typed = frame[columns].copy()
    for column in columns:
        typed[column] = typed[column].astype(str).str.strip()
    typed = _fill_numeric_missing(typed, roles.numeric_missing, source)
    missing_category = set(roles.missing_category_columns())
    for column in roles.numeric_columns:
        if column not in typed:
            continue
        numbers = pd.to_numeric(typed[column], errors="coerce")
        kept_missing = typed[column].eq("") if column in missing_category else pd.Series(False, index=typed.index)
        bad = (numbers.isna() & ~kept_missing) | (numbers != numbers.round()) & numbers.notna()
        if bad.any():
            line = int(bad.to_numpy().nonzero()[0][0]) + 2  # header is line 1
            empty = typed[column].eq("")
            if empty.any():
                line = int(empty.to_numpy().nonzero()[0][0]) + 2
                raise input_error(
                    source,
                    column,
                    f"empty cell at line {line} ({int(empty.sum())} such cells) and the policy says nothing about "
                    "missing values here",
                    f"set schema.numeric_missing.{column} to drop, category or a public imputation value",
                )
            raise input_error(
                source,
                column,
                f"non-integer value at line {line} ({int(bad.sum())} such values)",
                "write whole numbers in this column",
            )
        # numeric_missing: category keeps an empty cell missing (a nullable integer column, <NA>)
        typed[column] = numbers.astype("Int64") if column in missing_category else numbers.astype("int64")
    wrong_day = typed[roles.event_date] != day
    if wrong_day.any():
        line = int(wrong_day.to_numpy().nonzero()[0][0]) + 2
        raise input_error(
            source,
            roles.event_date,
            f"record at line {line} is not dated {day}",
            "put each record in the file of its own event date",
        )
    return typed


def _fill_numeric_missing(typed: pd.DataFrame, rules: dict[str, str | int], source: str) -> pd.DataFrame:
    """Apply the policy's rule for empty numeric cells: drop the record, or impute a public value."""
    for column, rule in rules.items():
        if column not in typed:
            continue
        empty = typed[column].eq("")
        if not empty.any():
            continue
        if rule == "category":
            continue  # kept missing: typed as a nullable integer below
        if rule == "drop":
            typed = typed[~empty].reset_index(drop=True)
        else:
            typed.loc[empty, column] = str(rule)
    if typed.empty:
        raise input_error(
            source, "(rows)", "no record left after dropping empty numeric cells", "check schema.numeric_missing"
        )
    return typed


def read_erasure_list(path: Path) -> set[str]:
    """Subject ids from an erasure/objection list (CSV with a ``subject_id`` column)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise input_error(
            str(path), "(file)", f"unreadable erasure list ({type(exc).__name__})", "fix the CSV"
        ) from None
    if "subject_id" not in frame.columns:
        raise input_error(str(path), "subject_id", "column missing", "give the list a 'subject_id' column")
    return {value.strip() for value in frame["subject_id"] if value.strip()}


def frame_sha256(frame: pd.DataFrame) -> str:
    """A content hash of a frame (order-sensitive), for lineage metadata; the data itself never leaves."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


def collect_partition(
    reader: RecordReader, day: str, policy: Policy, erased_subjects: Iterable[str] = ()
) -> CollectedPartition:
    """Read, validate and filter one daily partition."""
    frame, source = reader.read_day(day)
    validated = validate_and_type(frame, source, policy, day)
    typed, dropped = handle_duplicate_ids(validated, source, policy)
    erased = set(erased_subjects)
    keep = ~typed[policy.schema_.subject_id].isin(erased)
    kept = typed[keep].reset_index(drop=True)
    return CollectedPartition(
        records=kept,
        source=source,
        rows_read=len(frame),
        rows_excluded_by_erasure=int((~keep).sum()),
        content_sha256=frame_sha256(kept),
        rows_dropped_as_duplicates=dropped,
        rows_dropped_missing=len(frame) - len(validated),
    )


def handle_duplicate_ids(typed: pd.DataFrame, source: str, policy: Policy) -> tuple[pd.DataFrame, int]:
    """Apply the policy's ``collection.duplicate_subject_ids``; return the records and how many were dropped.

    A repeated id in a data set with one record per person is a delivery error (a file appended twice, a join
    gone wrong); trained on, it would count one person twice in every privacy guarantee.
    """
    rule = policy.collection.duplicate_subject_ids
    column = policy.schema_.subject_id
    repeated = typed[column].duplicated(keep="first")
    if rule == "allow" or not repeated.any():
        return typed, 0
    if rule == "keep_first":
        return typed[~repeated].reset_index(drop=True), int(repeated.sum())
    line = int(repeated.to_numpy().nonzero()[0][0]) + 2
    raise input_error(
        source,
        column,
        f"subject id at line {line} appears earlier in the partition ({int(repeated.sum())} repeated ids)",
        "remove the duplicated records, or set collection.duplicate_subject_ids to keep_first or allow in the policy",
    )
