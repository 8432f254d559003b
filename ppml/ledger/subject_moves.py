"""Set-based SQL of the per-subject accounts: one request's subjects loaded once, cohorts moved as wholes.

Why: a run names up to millions of subjects. Looking each up and rewriting each subject's row per run costs
minutes at a million subjects (``bench/ledger_bench.py``). Here the request's subject keys go into a temporary
table in one bulk load (PostgreSQL ``COPY``; SQLite ``executemany``), every question is one join against it, and
a cohort whose requested members are all of its members (the usual case: subjects sharing a history share their
window) moves by updating its one cohort row. Only when a run includes part of a cohort is it split, and then the
*smaller* side is re-pointed to a new cohort id, so per-run writes are the new subjects plus the smaller sides.

A cohort's id is the hash of its history when it was created; its history is its ``runs`` list (ids stay
stable while the history grows). Two cohorts never share a history: new subjects of a run form one new cohort,
and a split gives its two sides different histories (one includes the run, the other does not).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ppml.ledger.schema import subject_cohorts

#: Temporary table holding one request's subject keys (dropped at the end of the transaction).
REQUEST_TABLE = "ppml_subject_request"
#: The salt of a subject key (with the data set): changing it would orphan every stored subject.
SUBJECT_KEY_PREFIX = "ppml-subject:"
_SQLITE_BATCH = 50_000
#: After admitting this many new subjects the subject table's planner statistics are refreshed.
_ANALYZE_AFTER = 1_000


@dataclass
class CohortMove:
    """What one run does to one existing cohort: ``included`` of its ``size`` members are in the run."""

    cohort: str
    history: list[str]
    size: int
    included: int


def subject_key(dataset: str, pseudonym: str) -> str:
    """What the ledger stores for a subject: a hash of the data set and the pseudonym (never the id)."""
    return hashlib.sha256(f"{SUBJECT_KEY_PREFIX}{dataset}\x1f{pseudonym}".encode()).hexdigest()


def subject_keys(dataset: str, pseudonyms: list[str]) -> list[str]:
    """:func:`subject_key` of many pseudonyms (the common prefix hashed once)."""
    prefix = hashlib.sha256(f"{SUBJECT_KEY_PREFIX}{dataset}\x1f".encode())
    keys = []
    for pseudonym in pseudonyms:
        digest = prefix.copy()
        digest.update(pseudonym.encode())
        keys.append(digest.hexdigest())
    return keys


def load_request(connection: Connection, keys: list[str]) -> None:
    """The request's subject keys (unique) into the temporary request table, in one bulk load."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text(f"CREATE TEMP TABLE {REQUEST_TABLE} (subject text NOT NULL) ON COMMIT DROP"))
        if keys:  # (an empty COPY body would read as one empty key; keys are hex: nothing to escape)
            cursor = connection.connection.cursor()
            try:
                cursor.copy_expert(f"COPY {REQUEST_TABLE} (subject) FROM STDIN", io.StringIO("\n".join(keys) + "\n"))
            finally:
                cursor.close()
        connection.execute(sa.text(f"ANALYZE {REQUEST_TABLE}"))
        return
    connection.execute(sa.text(f"DROP TABLE IF EXISTS temp.{REQUEST_TABLE}"))
    connection.execute(sa.text(f"CREATE TEMP TABLE {REQUEST_TABLE} (subject TEXT PRIMARY KEY)"))
    insert = sa.text(f"INSERT INTO temp.{REQUEST_TABLE} (subject) VALUES (:s)")
    for start in range(0, len(keys), _SQLITE_BATCH):
        connection.execute(insert, [{"s": k} for k in keys[start : start + _SQLITE_BATCH]])


def drop_request(connection: Connection) -> None:
    """SQLite keeps temporary tables per connection, past the transaction: drop it (PostgreSQL: ON COMMIT DROP)."""
    if connection.dialect.name != "postgresql":
        connection.execute(sa.text(f"DROP TABLE IF EXISTS temp.{REQUEST_TABLE}"))


def requested_per_cohort(connection: Connection, dataset: str) -> dict[str, int]:
    """How many of the request's subjects each existing cohort holds (new subjects are in none)."""
    query = sa.text(
        f"SELECT s.cohort, count(*) FROM {REQUEST_TABLE} r JOIN ppml_ledger_subjects s "
        "ON s.dataset = :dataset AND s.subject = r.subject GROUP BY s.cohort"
    )
    return {str(cohort): int(count) for cohort, count in connection.execute(query, {"dataset": dataset})}


def requested_in(connection: Connection, dataset: str, cohorts: list[str], *, new: bool) -> set[str]:
    """The request's subject keys that are in ``cohorts`` (and, with ``new``, those not known yet)."""
    found: set[str] = set()
    if cohorts:
        query = sa.text(
            f"SELECT r.subject FROM {REQUEST_TABLE} r JOIN ppml_ledger_subjects s "
            "ON s.dataset = :dataset AND s.subject = r.subject WHERE s.cohort IN :cohorts"
        ).bindparams(sa.bindparam("cohorts", expanding=True))
        found.update(connection.execute(query, {"dataset": dataset, "cohorts": cohorts}).scalars())
    if new:
        query = sa.text(
            f"SELECT r.subject FROM {REQUEST_TABLE} r WHERE NOT EXISTS (SELECT 1 FROM ppml_ledger_subjects s "
            "WHERE s.dataset = :dataset AND s.subject = r.subject)"
        )
        found.update(connection.execute(query, {"dataset": dataset}).scalars())
    return found


def cohort_id(parent: str, run_ids: tuple[str, ...], side: str) -> str:
    """A new cohort's id: the hash of where it came from (deterministic, never reused: run ids are fresh)."""
    return hashlib.sha256(f"{parent}:{','.join(run_ids)}:{side}".encode()).hexdigest()


def apply_moves(
    connection: Connection,
    dataset: str,
    moves: list[CohortMove],
    new_subjects: int,
    run_ids: tuple[str, ...],
    empty_cohort: str,
    now: datetime,
) -> None:
    """Add ``run_ids`` to the history of every requested subject of ``moves`` and admit the new subjects."""
    repoint: list[dict[str, str]] = []  # old cohort, new cohort, which side moves ("in": requested ones)
    for move in moves:
        grown = [*move.history, *run_ids]
        if move.included >= move.size:  # the whole cohort is in the run: its one row changes
            _update_cohort(connection, dataset, move.cohort, grown, move.size, now)
        elif move.included <= move.size - move.included:  # the requested side is smaller: it moves out
            fresh = cohort_id(move.cohort, run_ids, "in")
            _insert_cohort(connection, dataset, fresh, grown, move.included, now)
            _update_cohort(connection, dataset, move.cohort, move.history, move.size - move.included, now)
            repoint.append({"old": move.cohort, "new": fresh, "side": "in"})
        else:  # the others are fewer: they keep the old history under a new id, the cohort row takes the run
            fresh = cohort_id(move.cohort, run_ids, "out")
            _insert_cohort(connection, dataset, fresh, move.history, move.size - move.included, now)
            _update_cohort(connection, dataset, move.cohort, grown, move.included, now)
            repoint.append({"old": move.cohort, "new": fresh, "side": "out"})
    _repoint(connection, dataset, repoint, now)
    if new_subjects:
        fresh = cohort_id(empty_cohort, run_ids, "new")
        _insert_cohort(connection, dataset, fresh, list(run_ids), new_subjects, now)
        connection.execute(
            sa.text(
                "INSERT INTO ppml_ledger_subjects (dataset, subject, cohort, updated_at) "
                f"SELECT :dataset, r.subject, :cohort, :now FROM {REQUEST_TABLE} r WHERE NOT EXISTS "
                "(SELECT 1 FROM ppml_ledger_subjects s WHERE s.dataset = :dataset AND s.subject = r.subject)"
            ),
            {"dataset": dataset, "cohort": fresh, "now": now},
        )
        if connection.dialect.name == "postgresql" and new_subjects >= _ANALYZE_AFTER:
            # fresh statistics, or the next run's joins are planned for an empty table (nested loops: minutes)
            connection.execute(sa.text("ANALYZE ppml_ledger_subjects"))


def _repoint(connection: Connection, dataset: str, repoint: list[dict[str, str]], now: datetime) -> None:
    """Re-point the smaller side of every split cohort: one set-based statement per split cohort."""
    for pair in repoint:
        member = "EXISTS" if pair["side"] == "in" else "NOT EXISTS"
        old, new = pair["old"], pair["new"]
        connection.execute(
            sa.text(
                "UPDATE ppml_ledger_subjects SET cohort = :new, updated_at = :now "
                f"WHERE dataset = :dataset AND cohort = :old AND {member} "
                f"(SELECT 1 FROM {REQUEST_TABLE} r WHERE r.subject = ppml_ledger_subjects.subject)"
            ),
            {"dataset": dataset, "old": old, "new": new, "now": now},
        )


def _update_cohort(
    connection: Connection, dataset: str, cohort: str, history: list[str], size: int, now: datetime
) -> None:
    connection.execute(
        subject_cohorts.update()
        .where(subject_cohorts.c.dataset == dataset, subject_cohorts.c.cohort == cohort)
        .values(runs=json.dumps(history), subjects=size, updated_at=now)
    )


def _insert_cohort(
    connection: Connection, dataset: str, cohort: str, history: list[str], size: int, now: datetime
) -> None:
    connection.execute(
        subject_cohorts.insert().values(
            dataset=dataset, cohort=cohort, runs=json.dumps(history), subjects=size, created_at=now, updated_at=now
        )
    )
