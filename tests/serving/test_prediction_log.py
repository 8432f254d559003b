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
