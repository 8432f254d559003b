"""Helpers for the Dagster tests: a private workspace per test and a policy variant sized for small windows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import GDPR_POLICY, mlflow_sqlite_uri


@dataclass
class GraphWorkspace:
    home: Path
    policy: Path
    resources: dict[str, Any]

    def run(self, job_name: str, instance: Any, **kwargs: Any) -> Any:
        from ppml_assets.definitions import defs

        job = defs.resolve_job_def(job_name)
        return job.execute_in_process(
            instance=instance,
            resources=self.resources,
            raise_on_error=False,
            run_config=kwargs.pop("run_config", {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}),
            **kwargs,
        )

    def collect(self, instance: Any, first: str, last: str) -> Any:
        return self.run(
            "collection_job",
            instance,
            tags={"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last},
        )


def write_policy(directory: Path, base: Path = GDPR_POLICY, **changes: Any) -> Path:
    """A shipped policy with absolute paths and ``section__field=value`` changes (for small test windows)."""
    document = yaml.safe_load(base.read_text())
    for qi in document["schema"]["quasi_identifiers"].values():
        if "hierarchy" in qi:
            qi["hierarchy"] = str((base.parent / qi["hierarchy"]).resolve())
    document["collection"]["erasure_list"] = str((base.parent / document["collection"]["erasure_list"]).resolve())
    document["allow_absolute_paths"] = True  # the test's policy lies in a temporary folder, its files do not
    for dotted, value in changes.items():
        section, field = dotted.split("__")
        document.setdefault(section, {})[field] = value
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def graph_workspace(
    home: Path, landing: Path, policy: Path, mlflow_uri: str | None = None, ledger_url: str | None = None
) -> GraphWorkspace:
    """Resources for one test's private workspace (plain values; production passes EnvVar for secrets)."""
    from ppml_assets.definitions import build_resources
    from resources import LandingZoneSource

    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    resources = build_resources(
        home,
        policy,
        LandingZoneSource(root=str(landing)),
        os.environ["PPML_HMAC_KEY"],
        mlflow_uri or mlflow_sqlite_uri(home),
        (home / "mlflow" / "artifacts").as_uri(),
        ledger_url or f"sqlite:///{home / 'ledger.db'}",
    )
    return GraphWorkspace(home=home, policy=policy, resources=resources)
