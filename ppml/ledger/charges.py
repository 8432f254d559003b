"""Charging a run while it trains: pre-charges before steps run, progress, completion, failure, and the
non-private baseline's record (listed, never composed).

Every write is a single-row monotone update (``steps = max(steps, new)``, evaluated by the database), so a late
or replayed write can never lower what the ledger counts.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from ppml.errors import PPMLError
from ppml.ledger.database import LedgerCore, greatest
from ppml.ledger.ownership import this_owner
from ppml.ledger.records import COMPLETED, FAILED, RUNNING, DataScope, utc_now
from ppml.ledger.schema import requests, runs


class Charges(LedgerCore):
    """What a run spends, written as it goes (never un-charged)."""

    def pre_charge(self, run_id: str, *, steps: int, epsilon: float) -> None:
        """Record, before they run, that up to ``steps`` steps (``epsilon``) may be spent. Monotone; refuses a
        process that no longer owns the run (another process took it over), so it stops instead of double-spending."""
        now = utc_now()
        with self.engine.begin() as connection:
            result = connection.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == RUNNING, runs.c.owner == this_owner())
                .values(
                    steps_charged=greatest(runs.c.steps_charged, steps),
                    epsilon_charged=greatest(runs.c.epsilon_charged, float(epsilon)),
                    heartbeat_unix=time.time(),
                    updated_at=now,
                )
            )
            if result.rowcount != 1:
                raise PPMLError(
                    f"ledger: field 'owner': run {run_id} is no longer running under this process; "
                    "fix: another process took it over -- stop this training"
                )
            dataset = connection.execute(sa.select(runs.c.dataset).where(runs.c.id == run_id)).scalar_one()
            self._event(connection, dataset, run_id, "pre_charge", steps, epsilon, None, None)

    def record_progress(self, run_id: str, *, steps: int, epsilon: float) -> None:
        """Steps finished and checkpointed (monotone)."""
        now = utc_now()
        with self.engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    steps_completed=greatest(runs.c.steps_completed, steps),
                    epsilon_spent=greatest(runs.c.epsilon_spent, float(epsilon)),
                    heartbeat_unix=time.time(),
                    updated_at=now,
                )
            )

    def complete_run(self, run_id: str, *, steps: int, epsilon: float, mlflow_run_id: str | None = None) -> None:
        now = utc_now()
        with self.engine.begin() as connection:
            values: dict[str, Any] = {
                "status": COMPLETED,
                "steps_completed": greatest(runs.c.steps_completed, steps),
                "steps_charged": greatest(runs.c.steps_charged, steps),
                "epsilon_spent": greatest(runs.c.epsilon_spent, float(epsilon)),
                "epsilon_charged": greatest(runs.c.epsilon_charged, float(epsilon)),
                "updated_at": now,
                "finished_at": now,
                "heartbeat_unix": time.time(),
            }
            if mlflow_run_id:
                values["mlflow_run_id"] = mlflow_run_id
            connection.execute(runs.update().where(runs.c.id == run_id).values(**values))
            dataset = connection.execute(sa.select(runs.c.dataset).where(runs.c.id == run_id)).scalar_one()
            self._event(connection, dataset, run_id, COMPLETED, steps, epsilon, None, None)

    def fail_run(self, run_id: str, message: str) -> None:
        """The run stopped with an error: it keeps counting everything it was pre-charged."""
        now = utc_now()
        with self.engine.begin() as connection:
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id, runs.c.status == RUNNING)
                .values(status=FAILED, message=message[:2000], updated_at=now, finished_at=now)
            )
            dataset = connection.execute(sa.select(runs.c.dataset).where(runs.c.id == run_id)).scalar_one_or_none()
            if dataset is not None:
                self._event(connection, dataset, run_id, FAILED, None, None, None, message[:2000])

    def set_mlflow_run(self, run_id: str, mlflow_run_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(runs.update().where(runs.c.id == run_id).values(mlflow_run_id=mlflow_run_id))

    def set_request_mlflow_run(self, request_id: str, mlflow_run_id: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(requests.update().where(requests.c.id == request_id).values(mlflow_run_id=mlflow_run_id))

    def request_mlflow_run(self, request_id: str) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(requests.c.mlflow_run_id).where(requests.c.id == request_id)
            ).scalar_one_or_none()

    def finish_request(
        self, request_id: str, *, selected_run_id: str | None, status: str = COMPLETED, message: str | None = None
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                requests.update()
                .where(requests.c.id == request_id)
                .values(status=status, selected_run_id=selected_run_id, message=message, updated_at=utc_now())
            )

    def record_non_private(
        self,
        scope: DataScope,
        *,
        config: Mapping[str, Any],
        config_fingerprint: str,
        steps: int,
        mlflow_run_id: str | None = None,
        dagster_run_id: str | None = None,
    ) -> str:
        """Record a non-private baseline run: listed for the audit trail, outside DP composition (it has no
        epsilon: its outputs must stay inside the trusted boundary -- tagged never-deploy, aggregates only)."""
        now = utc_now()
        run_id = str(uuid.uuid4())
        with self._locked(scope) as connection:
            connection.execute(
                runs.insert().values(
                    id=run_id,
                    request_id=None,
                    dataset=scope.dataset,
                    partitions=json.dumps(list(scope.partitions)),
                    record_set_hash=scope.record_set_hash,
                    candidate_index=0,
                    config_fingerprint=config_fingerprint,
                    config=json.dumps(dict(config), sort_keys=True, default=str),
                    kind="non_private",
                    status=COMPLETED,
                    planned_steps=steps,
                    steps_charged=0,
                    steps_completed=steps,
                    mlflow_run_id=mlflow_run_id,
                    dagster_run_id=dagster_run_id,
                    owner=this_owner(),
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                )
            )
            self._event(
                connection,
                scope.dataset,
                run_id,
                "non_private",
                steps,
                None,
                dagster_run_id,
                "non-private baseline: never deploy",
            )
        return run_id
