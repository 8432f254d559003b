"""Which days of data a record source holds, so that partitions start and end where the data does.

A daily partition that has no data is a wall of "missing" partitions in the UI and a backfill that fails; the
as-of day of a run defaults to the newest day there is. Both sources answer the same question: the landing zone
by its ``event_date=YYYY-MM-DD`` folders, an SQL table by the distinct values of its event-date column.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa

from ppml.errors import input_error

_DAY_FOLDER = re.compile(r"^event_date=(\d{4}-\d{2}-\d{2})$")


def landing_zone_days(root: Path) -> list[str]:
    """The days with a delivered ``records.csv`` under ``root``, oldest first (empty when there are none)."""
    if not root.is_dir():
        return []
    days = []
    for folder in root.iterdir():
        match = _DAY_FOLDER.match(folder.name)
        if match and (folder / "records.csv").is_file():
            try:
                days.append(date.fromisoformat(match.group(1)).isoformat())
            except ValueError:
                continue
    return sorted(days)


def sql_days(url: str, table: str, event_date_column: str = "event_date") -> list[str]:
    """The distinct event dates of an SQL table, oldest first."""
    engine = sa.create_engine(url)
    source = f"{engine.url.render_as_string(hide_password=True)}#{table}"
    try:
        with engine.connect() as connection:
            reflected = sa.Table(table, sa.MetaData(), autoload_with=connection)
            if event_date_column not in reflected.c:
                raise input_error(source, event_date_column, "the table has no event-date column", "name its column")
            column = sa.cast(reflected.c[event_date_column], sa.String)
            values = connection.execute(sa.select(column).distinct()).scalars().all()
    except sa.exc.NoSuchTableError:
        raise input_error(source, "table", f"table '{table}' does not exist", "create it or fix the name") from None
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        raise input_error(source, "url", f"cannot connect ({reason})", "check the database URL") from None
    finally:
        engine.dispose()
    return sorted({str(value)[:10] for value in values if value})


def partition_bounds(days: list[str]) -> tuple[str, str] | None:
    """Start (inclusive) and end (exclusive, as Dagster's DailyPartitionsDefinition takes it) of the data's days."""
    if not days:
        return None
    return days[0], (date.fromisoformat(days[-1]) + timedelta(days=1)).isoformat()
