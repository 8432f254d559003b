"""The prediction log: what was served, to whom and by which version, with pseudonymous request ids only.

Each row holds a random request id (unlinkable to the person the record describes), the client's key
fingerprint, the model version, the input in its *released* form (generalized labels and bins, as in the
anonymized training set; never a raw value and never a direct identifier), the score and the label, and the
true label when feedback arrives later. One SQLAlchemy URL: SQLite under PPML_HOME by default, PostgreSQL in
production (``PPML_SERVE_LOG_URL``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ppml.errors import PPMLError

LOG_URL_ENV = "PPML_SERVE_LOG_URL"

metadata = sa.MetaData()
predictions = sa.Table(
    "ppml_predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(32), nullable=False, index=True),
    sa.Column("row_index", sa.Integer, nullable=False),
    sa.Column("client", sa.String(32), nullable=False, index=True),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("released_input", sa.Text, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("predicted_label", sa.Integer, nullable=False),
    sa.Column("feedback_label", sa.Integer, nullable=True),
    sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("request_id", "row_index", name="uq_ppml_prediction_row"),
)


def _sqlite_wal(connection: Any, _: Any) -> None:
    """Write-ahead log with synchronous=NORMAL: a commit is an append to the WAL, not an fsync of the database
    (durable when the process dies; the last commits may be lost only if the machine itself loses power), and
    monitoring's reads do not block the server's writes."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def default_log_url(home: Path) -> str:
    return f"sqlite:///{home / 'serving' / 'predictions.db'}"


def log_url_from_env(home: Path, environ: Mapping[str, str] | None = None) -> str:
    """The log ppml serve writes and monitoring reads: PPML_SERVE_LOG_URL, else SQLite under PPML_HOME."""
    return (os.environ if environ is None else environ).get(LOG_URL_ENV) or default_log_url(home)


class PredictionLog:
    """Append-only prediction rows plus later feedback; safe to share between the server's worker threads."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.engine = sa.create_engine(url)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_wal)
            metadata.create_all(self.engine)
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise PPMLError(
                f"{LOG_URL_ENV}: field 'url': the prediction log cannot be opened ({first}); fix: give a reachable "
                "SQLAlchemy URL (sqlite:///PATH or postgresql+psycopg2://...)"
            ) from None
        self._lock = threading.Lock()  # SQLite allows one writer; PostgreSQL does not mind
        self._writer = GroupCommitWriter(self._insert)
        self._json: dict[tuple[tuple[str, str], ...], str] = {}

    def record(
        self,
        request_id: str,
        client: str,
        model_name: str,
        version: str,
        released: Sequence[dict[str, str]],
        scores: Sequence[float],
        labels: Sequence[int],
    ) -> None:
        now = datetime.now(UTC)
        rows = [
            {
                "request_id": request_id,
                "row_index": index,
                "client": client,
                "model_name": model_name,
                "model_version": version,
                "created_at": now,
                "released_input": self._serialized(values),
                "score": float(score),
                "predicted_label": int(label),
            }
            for index, (values, score, label) in enumerate(zip(released, scores, labels, strict=True))
        ]
        self._writer.write(rows)  # returns once the rows are committed: an answered request is in the log

    def _serialized(self, values: dict[str, str]) -> str:
        """The released record as JSON (sorted keys), memoized: released records repeat (generalized labels)."""
        key = tuple(values.items())
        text = self._json.get(key)
        if text is None:
            text = json.dumps(values, sort_keys=True)
            if len(self._json) < 100_000:
                self._json[key] = text
        return text

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._lock, self.engine.begin() as connection:
            connection.execute(predictions.insert(), rows)

    def feedback(self, client: str, request_id: str, row_index: int, label: int) -> int:
        """Attach a later-known true label to a client's own prediction; returns the rows matched (0 or 1)."""
        statement = (
            predictions.update()
            .where(
                predictions.c.client == client,
                predictions.c.request_id == request_id,
                predictions.c.row_index == row_index,
            )
            .values(feedback_label=int(label), feedback_at=datetime.now(UTC))
        )
        with self._lock, self.engine.begin() as connection:
            return int(connection.execute(statement).rowcount)

    def rows_per_client(self) -> dict[str, int]:
        """Rows served per client so far: the query budget survives a restart."""
        statement = sa.select(predictions.c.client, sa.func.count()).group_by(predictions.c.client)
        with self.engine.connect() as connection:
            return {client: int(count) for client, count in connection.execute(statement)}

    def served_rows(self, model_name: str, version: str, since: datetime) -> Iterator[tuple[Any, ...]]:
        """(released_input, score, predicted_label, feedback_label, created_at) of one version's rows since a time,
        streamed (monitoring aggregates them; no row leaves the engine)."""
        columns = predictions.c
        statement = (
            sa.select(
                columns.released_input,
                columns.score,
                columns.predicted_label,
                columns.feedback_label,
                columns.created_at,
            )
            .where(columns.model_name == model_name, columns.model_version == version, columns.created_at >= since)
            .execution_options(yield_per=5000)
        )
        with self.engine.connect() as connection:
            yield from connection.execute(statement)

    def last_row_id(self) -> int:
        """The newest row's id (0 for an empty log): the monitoring sensor's cursor."""
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.max(predictions.c.id))).scalar() or 0)

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one())

    def close(self) -> None:
        self._writer.close()
        self.engine.dispose()


class _Pending:
    __slots__ = ("done", "error", "rows")

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows, self.done, self.error = rows, False, None


class GroupCommitWriter:
    """Group commit: the rows of requests that arrive while a commit is running go to the database together.

    The request thread that gets the commit lock commits every row queued so far (its own included) in one
    transaction; the others wait for the lock and find their rows committed. Uncontended, a request commits its
    own rows with no hand-off to another thread; under load one commit serves many requests. A request returns
    only once its rows are committed, so nothing is answered before it is logged and nothing is dropped (the
    queue holds at most one entry per server thread, each waiting for its own).
    """

    def __init__(self, insert: Any) -> None:
        self._insert = insert
        self._guard = threading.Lock()
        self._commit_lock = threading.Lock()
        self._queued: list[_Pending] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        pending = _Pending(rows)
        with self._guard:
            self._queued.append(pending)
        with self._commit_lock:
            if not pending.done:
                with self._guard:
                    group, self._queued = self._queued, []
                self._commit(group)
        if pending.error is not None:
            raise pending.error

    def close(self) -> None:
        """Nothing is left queued: every write commits before it returns."""

    def _commit(self, group: list[_Pending]) -> None:
        try:
            self._insert([row for pending in group for row in pending.rows])
        except Exception:  # one request's failure must not fail the others: each alone, its own error
            for pending in group:
                try:
                    self._insert(pending.rows)
                except Exception as error:
                    pending.error = error
        for pending in group:
            pending.done = True
