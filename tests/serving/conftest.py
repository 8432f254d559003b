"""The serving tests' one registered production version (a small real training), shared by the modules."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.graph_support import write_policy
from tests.serving.serving_support import BUDGET, RATE, Registered, register_small_model


@pytest.fixture(scope="session")
def registered(tmp_path_factory: pytest.TempPathFactory, landing_zone: Path) -> Registered:
    folder = tmp_path_factory.mktemp("serving")
    policy = write_policy(
        folder,
        serving__output="probability",
        serving__probability_decimals=4,
        serving__requests_per_minute=RATE,
        serving__queries_per_client=BUDGET,
        serving__max_batch_rows=50,
        serving__poll_seconds=0.3,
    )
    policy.write_text(policy.read_text().replace("name: adult-income-gdpr", f"name: serving-{uuid.uuid4().hex[:8]}"))
    return register_small_model(landing_zone, policy)
