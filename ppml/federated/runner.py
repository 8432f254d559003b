"""One federated training run end to end: refuse failed sites, plan and pre-charge every site's ledger scope,
start the Deployment Engine, run ppml's Flower App, settle the ledgers from what each site really did.

Used by the ``federated_model`` asset and by bench/federated_bench.py; it never imports Dagster.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ppml.errors import PPMLError
from ppml.federated.accounting import (
    SiteBooking,
    SitePlan,
    book_sites,
    client_level_plan,
    example_level_plan,
    settle_sites,
)
from ppml.federated.deployment import Federation, tls_files
from ppml.federated.node_auth import node_key_files
from ppml.federated.progress import read_rounds, reset
from ppml.federated.run_config import RunConfig
from ppml.federated.server_app import MODEL_FILE, RESULT_FILE
from ppml.federated.site_prep import SitePreparation, global_feature_names
from ppml.ledger import LifetimeBudget, PrivacyLedger
from ppml.policy import LoadedPolicy, auto_delta


@dataclass
class FederatedOutcome:
    """What the run produced: the model's weights, the server's history, and each site's ledger settlement."""

    weights: list[np.ndarray]
    feature_names: list[str]
    plans: dict[str, SitePlan]
    rounds_done: dict[str, int]
    history: dict[str, Any]
    ledger_runs: dict[str, str] = field(default_factory=dict)
    audits: dict[str, dict[str, Any]] = field(
        default_factory=dict
    )  # site -> its white-box audit (ppml.federated.audit)
    lira: dict[str, dict[str, Any]] = field(default_factory=dict)  # site -> its offline LiRA (site_lira)
    client_audit: dict[str, Any] | None = None  # client-level DP: the federation's canary-client audit

    def summary(self) -> dict[str, Any]:
        return {
            "plans": {s: p.to_dict() for s, p in self.plans.items()},
            "rounds_done": self.rounds_done,
            "history": self.history,
            "ledger_runs": self.ledger_runs,
            "audits": self.audits,
            "lira": self.lira,
            "client_audit": self.client_audit,
            "features": len(self.feature_names),
        }


def refuse_failed_sites(preparations: list[SitePreparation]) -> None:
    failed = [p for p in preparations if not p.passed]
    if failed:
        first = failed[0]
        raise PPMLError(
            f"site {first.site}: field 'checks': {'; '.join(first.failures)[:400]}; fix: correct the site's data "
            "(or remove the site from training.federation.sites) -- the federation refuses a site whose checks failed"
        )


def plan_sites(loaded: LoadedPolicy, preparations: list[SitePreparation]) -> dict[str, SitePlan]:
    policy = loaded.policy
    fed = policy.training.federation
    assert fed is not None
    privacy, accountant = policy.privacy, policy.training.accountant
    plans = {}
    pooled = sum(p.rows.get("train", 0) for p in preparations)
    for prep in preparations:
        n_train = prep.rows.get("train", 0)
        if fed.dp_mode == "example":
            delta = auto_delta(n_train) if privacy.delta == "auto" else float(privacy.delta)
            plans[prep.site] = example_level_plan(prep.site, n_train, fed, privacy.epsilon, delta, accountant)
        else:
            delta = auto_delta(pooled) if privacy.delta == "auto" else float(privacy.delta)
            plans[prep.site] = client_level_plan(prep.site, fed, privacy.epsilon, delta, accountant)
    return plans


def run_config(loaded: LoadedPolicy, names: list[str], plans: dict[str, SitePlan], result_dir: Path) -> RunConfig:
    training = loaded.policy.training
    fed = training.federation
    assert fed is not None
    return RunConfig(
        dp_mode=fed.dp_mode,
        secure_aggregation=fed.secure_aggregation,
        rounds=fed.rounds,
        sites=len(fed.sites),
        sampled_sites=fed.sampled_sites,
        min_sites=fed.min_sites,
        local_epochs=fed.local_epochs,
        learning_rate=fed.learning_rate,
        batch_size=fed.batch_size,
        max_grad_norm=training.max_grad_norm,
        client_clipping_norm=fed.client_clipping_norm,
        round_timeout_s=fed.round_timeout_s,
        hidden_sizes=list(training.hidden_sizes) if training.model == "mlp" else [],
        feature_names=names,
        site_plans={s: p.to_dict() for s, p in plans.items()},
        seed=training.seed,
        result_dir=str(result_dir),
    )


def run_federation(
    loaded: LoadedPolicy,
    site_dirs: dict[str, Path],
    work_dir: Path,
    ledger: PrivacyLedger,
    *,
    request_key: str,
    dagster_run_id: str | None = None,
    audit_server_opens: Path | None = None,
    on_started: Any = None,
) -> FederatedOutcome:
    """Refuse, plan, pre-charge, run, settle. ``on_started(federation)`` lets fault tests act mid-run."""
    policy = loaded.policy
    fed = policy.training.federation
    if fed is None:
        raise PPMLError(f"{loaded.path}: field 'training.mode': not federated; fix: set training.mode: federated")
    tls = tls_files(fed, loaded.resolve, str(loaded.path))  # before any charge: a bad file refuses the run
    node_keys = node_key_files(fed, loaded.resolve, str(loaded.path))  # likewise a bad or mismatched key
    preparations = [SitePreparation.read(site_dirs[site.name]) for site in fed.sites]
    refuse_failed_sites(preparations)
    names = global_feature_names(preparations)
    plans = plan_sites(loaded, preparations)
    lifetime = LifetimeBudget(policy.privacy.lifetime_epsilon_budget, max(p.delta for p in plans.values()))
    ledger_config = {"policy": loaded.content_hash[:16], "rounds": fed.rounds, "secagg": fed.secure_aggregation}
    bookings: list[SiteBooking] = book_sites(
        ledger,
        policy.dataset.id,
        list(plans.values()),
        lifetime,
        request_key=request_key,
        config=ledger_config,
        dagster_run_id=dagster_run_id,
    )
    result_dir = Path(work_dir) / "server" / "result"
    shutil.rmtree(result_dir, ignore_errors=True)
    for site_dir in site_dirs.values():
        reset(site_dir)
    config = run_config(loaded, names, plans, result_dir)
    failure: str | None = None
    try:
        with Federation(
            Path(work_dir), dict(site_dirs), audit_server_opens=audit_server_opens, tls=tls, node_keys=node_keys
        ) as federation:
            if on_started is not None:
                on_started(federation)
            finished = federation.run(config, timeout_s=fed.round_timeout_s * (fed.rounds + 1) + 60)
            if finished.returncode != 0 or not (result_dir / RESULT_FILE).is_file():
                failure = (
                    f"federation: field '(run)': the Flower run failed (exit {finished.returncode}); "
                    f"fix: read {federation.log_path('flwr-run')}"
                )
    except BaseException as error:
        failure = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise
    finally:
        rounds_done = {site: len(read_rounds(site_dirs[site])) for site in plans}
        settle_sites(ledger, bookings, rounds_done, failed=failure)
    if failure is not None:
        raise PPMLError(failure)
    history = json.loads((result_dir / RESULT_FILE).read_text(encoding="utf-8"))
    with np.load(result_dir / MODEL_FILE) as archive:
        weights = [archive[f"arr_{i}"] for i in range(len(archive.files))]
    return FederatedOutcome(weights, names, plans, rounds_done, history, {b.site: b.run_id for b in bookings})
