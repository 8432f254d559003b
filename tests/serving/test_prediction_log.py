"""The prediction log on SQLite and on the local PostgreSQL server: rows, feedback, per-client counts."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ppml.errors import PPMLError


def _exercise(url: str) -> None:
    from ppml.serving.prediction_log import PredictionLog

    log = PredictionLog(url)
    try:
        request = uuid.uuid4().hex
        released = [{"age": "20-39", "sex": "Male"}, {"age": "40-59", "sex": "Female"}]
        log.record(request, "client-a", "ppml-x", "3", released, [0.2, 0.7], [0, 1])
        log.record(uuid.uuid4().hex, "client-b", "ppml-x", "3", released[:1], [0.4], [0])
        assert log.count() == 3 and log.rows_per_client() == {"client-a": 2, "client-b": 1}
        assert log.feedback("client-a", request, 1, 1) == 1
        assert log.feedback("client-b", request, 0, 1) == 0  # not its prediction
        assert log.feedback("client-a", request, 5, 1) == 0
        rows = list(log.served_rows("ppml-x", "3", datetime.now(UTC) - timedelta(hours=1)))
        assert sorted((r[1], r[2], r[3]) for r in rows) == [(0.2, 0, None), (0.4, 0, None), (0.7, 1, 1)]
        assert {r[0] for r in rows} == {
            json.dumps(released[0], sort_keys=True),
            json.dumps(released[1], sort_keys=True),
        }
        assert list(log.served_rows("ppml-x", "4", datetime.now(UTC) - timedelta(hours=1))) == []
        assert list(log.served_rows("ppml-x", "3", datetime.now(UTC) + timedelta(minutes=1))) == []
        assert log.last_row_id() >= 3
    finally:
        log.close()


def test_prediction_log_on_sqlite(tmp_path: Path) -> None:
    _exercise(f"sqlite:///{tmp_path / 'serving' / 'predictions.db'}")


def test_prediction_log_on_postgresql(postgres_database: str) -> None:
    _exercise(postgres_database)


def test_unreachable_log_is_one_line() -> None:
    from ppml.serving.prediction_log import PredictionLog

    with pytest.raises(PPMLError, match="field 'url': the prediction log cannot be opened") as caught:
        PredictionLog("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    assert "\n" not in str(caught.value)


def test_group_commit_loses_nothing_and_shares_commits(tmp_path: Path) -> None:
    """Eight threads writing at once: every write's rows are committed when it returns, and none is lost."""
    import threading

    from ppml.serving.prediction_log import PredictionLog

    log = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}")
    transactions = []
    insert = log._writer._insert
    log._writer._insert = lambda rows: (transactions.append(len(rows)), insert(rows))  # rows per transaction
    try:

        def client(name: str) -> None:
            for written in range(1, 41):
                log.record(uuid.uuid4().hex, name, "m", "1", [{"a": "x"}, {"a": "y"}], [0.1, 0.9], [0, 1])
                assert log.rows_per_client()[name] == 2 * written  # returned: its rows are committed

        threads = [threading.Thread(target=client, args=(f"client-{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert log.count() == 8 * 40 * 2 == sum(transactions)
        assert log.rows_per_client() == {f"client-{i}": 80 for i in range(8)}
    finally:
        log.close()
