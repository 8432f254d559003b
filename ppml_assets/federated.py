"""The federated lifecycle's thin Dagster layer: prepare every site, refuse a failed one, train on Flower.

Its own code location (``dagster dev -m ppml_assets.federated``), because a federated policy has no pooled
records: no raw_records/anonymized_records of its own, one preparation per site instead. The engines do the work
(ppml/federated/); these assets only read the resources, call them and record metadata.
"""

import os
from datetime import date, timedelta
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Config,
    Definitions,
    EnvVar,
    MetadataValue,
    asset,
    asset_check,
)

from ppml.federated.audit import audit_client_dp, audit_sites
from ppml.federated.gate import federated_requirements
from ppml.federated.report import federated_evidence, write_federated_report
from ppml.federated.runner import run_federation
from ppml.federated.site_lira import lira_sites
from ppml.federated.site_prep import SitePreparation, prepare_site
from ppml.federated.sites import write_federated_landing_zones
from ppml.federated.tracking import log_federated_run
from ppml.landing_zone import DEFAULT_DAYS, DEFAULT_FIRST_DAY
from ppml.policy import LoadedPolicy, bundled_policy_path
from ppml_assets.settings import PPML_HOME, default_ledger_url, default_mlflow_tracking_uri
from resources import LedgerResource, MlflowResource, PolicyResource, PseudonymizationKey, WorkspacePaths

#: Set (to a folder) to log every file the server-side processes open: the test that they open no site file.
AUDIT_SERVER_OPENS_ENV = "PPML_FEDERATED_AUDIT_SERVER_OPENS"
LAST_BUNDLED_DAY = (DEFAULT_FIRST_DAY + timedelta(days=DEFAULT_DAYS - 1)).isoformat()


class FederatedRunConfig(Config):
    as_of: str = LAST_BUNDLED_DAY  # the training window ends on this day
    bundled_days: int = 0  # bundled sites only: generate just the window's last N days (0 = the whole window)


def window(loaded: LoadedPolicy, as_of: str) -> list[str]:
    last = date.fromisoformat(as_of)
    days = loaded.policy.collection.training_window_days
    return [(last - timedelta(days=offset)).isoformat() for offset in reversed(range(days))]


def site_dir(paths: WorkspacePaths, loaded: LoadedPolicy, site: str) -> Path:
    return Path(paths.home) / "federated" / loaded.policy.name / "sites" / site


def ensure_bundled_sites(loaded: LoadedPolicy, home: Path, days: list[str]) -> dict | None:
    """The bundled federated variant, written once when the policy's site landing zones do not exist yet."""
    fed = loaded.policy.training.federation
    assert fed is not None
    roots = [home / site.landing_zone for site in fed.sites if site.landing_zone is not None]
    if len(roots) != len(fed.sites) or any(root.exists() for root in roots):
        return None  # a site reads SQL or its landing zone exists: it is the site's data, never generated
    parents = {root.parent for root in roots}
    if len(parents) != 1 or [root.name for root in roots] != [site.name for site in fed.sites]:
        return None  # not the bundled layout (<folder>/<site name>)
    return write_federated_landing_zones(parents.pop(), [s.name for s in fed.sites], only_days=days).to_dict()


@asset(group_name="federated", kinds={"python"})
def federated_sites(
    context: AssetExecutionContext,
    config: FederatedRunConfig,
    policy: PolicyResource,
    pseudonym_key: PseudonymizationKey,
    paths: WorkspacePaths,
) -> dict:
    """Every site's collection, GX checks, de-identification, anonymization and preparation, each on its own
    records only (ppml.federated.site_prep); aggregates and verdicts only leave a site."""
    loaded = policy.load()
    fed = loaded.policy.training.federation
    if fed is None:
        raise ValueError(f"{loaded.path}: field 'training.mode': not federated; fix: use a federated policy")
    days = window(loaded, config.as_of)
    generated = ensure_bundled_sites(
        loaded, Path(paths.home), days[-config.bundled_days :] if config.bundled_days else days
    )
    preparations = {
        site.name: prepare_site(
            loaded, site, days, pseudonym_key.key(), Path(paths.home), site_dir(paths, loaded, site.name)
        ).to_dict()
        for site in fed.sites
    }
    context.add_output_metadata(
        {
            "sites": MetadataValue.json(
                {s: {k: p[k] for k in ("passed", "rows", "failures")} for s, p in preparations.items()}
            ),
            "generated_bundled_sites": MetadataValue.json(generated or {}),
        }
    )
    return preparations


@asset_check(asset=federated_sites, blocking=True)
def every_site_passed(federated_sites: dict) -> AssetCheckResult:
    """The federation refuses a site whose checks failed: this check blocks federated_model."""
    failed = {site: prep["failures"] for site, prep in federated_sites.items() if not prep["passed"]}
    return AssetCheckResult(
        passed=not failed,
        description="every site passed its checks" if not failed else f"refused sites: {sorted(failed)}",
        metadata={"failed_sites": MetadataValue.json(failed)},
    )


@asset(group_name="federated", deps=[federated_sites], kinds={"python", "mlflow"})
def federated_model(
    context: AssetExecutionContext,
    policy: PolicyResource,
    paths: WorkspacePaths,
    ledger: LedgerResource,
    mlflow: MlflowResource,
) -> dict:
    """A SuperLink and one SuperNode per site on loopback run ppml's Flower App; every site's ledger scope is
    pre-charged first; with example-level DP each site then audits the mechanism on its own records (charged to
    its scope), with client-level DP canary clients audit the server's DP aggregation (no charge); the model is
    gated per site, logged to MLflow and registered (promoted only if passed)."""
    from ppml_assets.common import open_ledger

    loaded = policy.load()
    fed = loaded.policy.training.federation
    if fed is None:
        raise ValueError(f"{loaded.path}: field 'training.mode': not federated; fix: use a federated policy")
    sites = {site.name: site_dir(paths, loaded, site.name) for site in fed.sites}
    for folder in sites.values():
        SitePreparation.read(folder)  # a one-line error when a site was never prepared
    store = open_ledger(ledger.url, loaded)
    try:
        outcome = run_federation(
            loaded,
            sites,
            Path(paths.home) / "federated" / loaded.policy.name / "federation",
            store,
            request_key=f"federated:{loaded.content_hash[:16]}:{context.run_id}",
            dagster_run_id=context.run_id,
            audit_server_opens=Path(audit) if (audit := os.environ.get(AUDIT_SERVER_OPENS_ENV)) else None,
        )
        outcome.audits = audit_sites(  # each site's white-box audit, charged to its own scope, before the gate
            loaded, sites, outcome, store, request_key=context.run_id, dagster_run_id=context.run_id
        )
        outcome.lira = lira_sites(  # each site's offline LiRA, its reference models charged to its own scope
            loaded, sites, outcome, store, request_key=context.run_id, dagster_run_id=context.run_id
        )
        outcome.client_audit = audit_client_dp(loaded, outcome)  # client-level DP: canary clients, no charge
    finally:
        store.close()
    verdicts = federated_requirements(loaded.policy, outcome)
    client = mlflow.client()
    registry = log_federated_run(client, mlflow.configure(), loaded, outcome, verdicts)
    preparations = {name: SitePreparation.read(folder) for name, folder in sites.items()}
    report_dir = Path(paths.home) / "reports" / "federated" / loaded.policy.name / context.run_id
    evidence, html = write_federated_report(
        federated_evidence(loaded, preparations, outcome, verdicts, registry), report_dir
    )
    context.add_output_metadata(
        {
            "report": MetadataValue.path(str(html)),
            "evidence": MetadataValue.path(str(evidence)),
            "registry": MetadataValue.json(registry),
            "requirements": MetadataValue.json([v.to_dict() for v in verdicts]),
            "site_metrics": MetadataValue.json(outcome.history.get("site_metrics", {})),
            "site_epsilon": MetadataValue.json({s: round(p.epsilon, 6) for s, p in outcome.plans.items()}),
            "site_audits": MetadataValue.json({s: a.get("message", a.get("error")) for s, a in outcome.audits.items()}),
            "site_lira": MetadataValue.json(outcome.lira),
            "client_audit": MetadataValue.json(
                (outcome.client_audit or {}).get("message", (outcome.client_audit or {}).get("error"))
            ),
            "rounds": MetadataValue.json(outcome.history.get("rounds", [])),
            "seconds": outcome.history.get("seconds", 0.0),
        }
    )
    return {
        **outcome.summary(),
        "registry": registry,
        "requirements": [v.to_dict() for v in verdicts],
        "report": str(html),
    }


def federated_resources(
    home: Path, policy_path: Path, hmac_key: str | EnvVar, mlflow_uri: str, ledger_url: str
) -> dict:
    return {
        "policy": PolicyResource(path=str(policy_path)),
        "pseudonym_key": PseudonymizationKey(hmac_key=hmac_key),
        "paths": WorkspacePaths(home=str(home)),
        "ledger": LedgerResource(url=ledger_url),
        "mlflow": MlflowResource(tracking_uri=mlflow_uri, experiment_name="ppml-federated"),
    }


FEDERATED_POLICY = Path(os.environ.get("PPML_FEDERATED_POLICY", bundled_policy_path("adult_federated"))).resolve()

defs = Definitions(
    assets=[federated_sites, federated_model],
    asset_checks=[every_site_passed],
    resources=federated_resources(
        PPML_HOME, FEDERATED_POLICY, EnvVar("PPML_HMAC_KEY"), default_mlflow_tracking_uri(), default_ledger_url()
    ),
)
