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
