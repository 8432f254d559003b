"""Deployment settings read once from the environment when the code location loads.

Everything has an embedded default so that `make demo` and `dagster dev -w workspace.yaml` work on a fresh
clone: PPML_HOME (``.ppml/`` in the working directory) holds the Dagster instance, MLflow's SQLite store and
artifacts, the landing zone, asset files, checkpoints and reports.
"""

import os
from datetime import date, timedelta
from pathlib import Path

from dagster import DailyPartitionsDefinition, TimeWindowPartitionMapping

from ppml.data_days import landing_zone_days, partition_bounds
from ppml.errors import input_error
from ppml.landing_zone import DEFAULT_FIRST_DAY
from ppml.policy import bundled_policy_path, load_policy
from ppml.private_files import use_private_umask
from ppml.workspace import default_home

#: Every process that loads the code location handles personal data: what it creates is owner-only.
use_private_umask()
PPML_HOME = default_home()
POLICY_PATH = Path(os.environ.get("PPML_POLICY", bundled_policy_path("adult_gdpr"))).resolve()


def _env_day(name: str, default: str | None) -> str | None:
    """A YYYY-MM-DD environment variable, refused in one line (not deep inside Dagster) when malformed."""
    value = os.environ.get(name) or default
    if value is None or value == "open":
        return None
    try:
        return date.fromisoformat(value.strip()).isoformat()
    except ValueError:
        raise input_error(
            "environment", name, f"'{value}' is not a date", f"export {name} as YYYY-MM-DD, e.g. 2026-01-01"
        ) from None


def _landing_zone_bounds() -> tuple[str, str] | None:
    """Where the landing zone's data starts and ends, when the partitions are not configured explicitly."""
    if os.environ.get("PPML_SOURCE", "landing_zone") == "sql":
        return None
    root = Path(os.environ.get("PPML_LANDING_ZONE", PPML_HOME / "landing"))
    return partition_bounds(landing_zone_days(root))


def partition_range_from_env() -> tuple[str, str | None]:
    """PPML_PARTITIONS_START/_END win; otherwise the landing zone's first and last day (else the bundled data's
    first day, open-ended); PPML_PARTITIONS_END=open keeps the partitions open for a source that grows daily."""
    bounds = _landing_zone_bounds()
    start = _env_day("PPML_PARTITIONS_START", bounds[0] if bounds else DEFAULT_FIRST_DAY.isoformat())
    end = _env_day("PPML_PARTITIONS_END", bounds[1] if bounds else None)
    if start is None or (end is not None and end <= start):
        raise input_error(
            "environment",
            "PPML_PARTITIONS_END",
            f"{end} is not after PPML_PARTITIONS_START {start}",
            "export an end day after the start day, or unset PPML_PARTITIONS_END",
        )
    return start, end


PARTITIONS_START, PARTITIONS_END = partition_range_from_env()

#: Collection and de-identification are partitioned by event date.
daily_partitions = DailyPartitionsDefinition(start_date=PARTITIONS_START, end_date=PARTITIONS_END)


def training_window_days() -> int:
    """The policy's training window; read at load time because the partition mapping is static."""
    return load_policy(POLICY_PATH, check_files=False).policy.collection.training_window_days


#: Everything from anonymization on is partitioned by the "as of" day of a training run, and reads the
#: policy's window of daily partitions ending that day: k-anonymity and DP hold over the released set.
training_window = TimeWindowPartitionMapping(
    start_offset=-(training_window_days() - 1), end_offset=0, allow_nonexistent_upstream_partitions=True
)


def window_partition_keys(as_of: str, days: int | None = None) -> list[str]:
    """The daily partitions of the ``days``-day training window ending ``as_of`` (clipped at the first
    partition); ``days`` defaults to the single-policy default's window."""
    last = date.fromisoformat(as_of)
    days = days or training_window_days()
    first = max(last - timedelta(days=days - 1), date.fromisoformat(PARTITIONS_START))
    return [(first + timedelta(days=offset)).isoformat() for offset in range((last - first).days + 1)]


def default_mlflow_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PPML_HOME / 'mlflow' / 'mlflow.db'}"


def default_ledger_url() -> str:
    """The ledger lives in the Dagster instance's database: PostgreSQL when configured, else SQLite beside it."""
    return os.environ.get("PPML_LEDGER_URL") or f"sqlite:///{PPML_HOME / 'dagster' / 'privacy_ledger.db'}"
