"""Test environment and constants, imported by conftest.py before any ppml_assets import.

The code location reads its environment once, so it is fixed here. The Dagster tests use a small training
window: partitions start on TEST_FIRST_DAY, so an as-of partition a few days later maps to just those days.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
from datetime import date, timedelta
from pathlib import Path

SESSION_HOME = Path(tempfile.mkdtemp(prefix="ppml-test-home-"))
TEST_FIRST_DAY = "2026-03-01"
os.environ["PPML_HOME"] = str(SESSION_HOME)
os.environ["PPML_PARTITIONS_START"] = TEST_FIRST_DAY
os.environ["PPML_PARTITIONS_END"] = "open"  # not derived from the session's landing zone (import order)
# A fixed test key keeps splits (and therefore attack results) reproducible across sessions.
os.environ["PPML_HMAC_KEY"] = hashlib.sha256(b"ppml test suite").hexdigest()
# The evidence pack's Ed25519 signing key: base64 of a fixed 32-byte seed (tests only).
os.environ["PPML_SIGNING_KEY"] = base64.b64encode(hashlib.sha256(b"ppml test suite signing").digest()).decode()
os.environ["GX_ANALYTICS_ENABLED"] = "False"
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{SESSION_HOME / 'mlflow' / 'mlflow.db'}"
os.environ.pop("DAGSTER_HOME", None)
os.environ.pop("PPML_POLICY", None)

REPO_ROOT = Path(__file__).resolve().parent.parent
GDPR_POLICY = REPO_ROOT / "policies" / "adult_gdpr.yaml"
HIPAA_POLICY = REPO_ROOT / "policies" / "adult_hipaa.yaml"
POSTGRES_ADMIN_URL = os.environ.get("PPML_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
LANDING_TEST_DAYS = 14


def days(first: str, count: int) -> list[str]:
    start = date.fromisoformat(first)
    return [(start + timedelta(days=offset)).isoformat() for offset in range(count)]


# ------------------------------------------------------------------------------------ child processes' environment

#: What a child ``ppml`` must not inherit from this session: it derives them from its own --policy and home.
SESSION_ONLY_VARIABLES = ("DAGSTER_HOME", "PPML_POLICY", "PPML_PARTITIONS_START", "PPML_PARTITIONS_END")


def mlflow_sqlite_uri(home: Path) -> str:
    """The MLflow tracking store ppml keeps under a home by default."""
    return f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"


def cli_environment(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a child ``ppml`` working in ``home``: the session's variables (the HMAC key among them)
    without the session-only ones, PPML_HOME, MLflow under the home, this checkout importable; then ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY_VARIABLES}
    env.update(PPML_HOME=str(home), MLFLOW_TRACKING_URI=mlflow_sqlite_uri(home), PYTHONPATH=str(REPO_ROOT))
    env.update(COLUMNS="200")
    return {**env, **extra}


def postgres_variables(dagster_url: str) -> dict[str, str]:
    """The PPML_PG_* variables deploy/dagster.yaml reads the Dagster instance's PostgreSQL database from."""
    import sqlalchemy as sa

    pg = sa.engine.make_url(dagster_url)
    return {
        "PPML_PG_HOST": pg.host or "127.0.0.1",
        "PPML_PG_PORT": str(pg.port or 5432),
        "PPML_PG_DB": pg.database or "",
        "PPML_PG_USER": pg.username or "postgres",
        "PPML_PG_PASSWORD": pg.password or "",
    }


def postgres_deployment(dagster_home: Path, dagster_url: str, mlflow_url: str) -> dict[str, str]:
    """A DAGSTER_HOME holding deploy/dagster.yaml (the instance on ``dagster_url``), the ledger in the same database
    and MLflow on ``mlflow_url``: the variables a ``ppml`` process needs to run like the PostgreSQL deployment."""
    import shutil

    dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    return {
        "DAGSTER_HOME": str(dagster_home),
        **postgres_variables(dagster_url),
        "PPML_LEDGER_URL": dagster_url,
        "MLFLOW_TRACKING_URI": mlflow_url,
    }
