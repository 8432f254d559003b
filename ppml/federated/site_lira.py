"""Offline LiRA against the federated model, inside each site, with reference models charged to the site's scope.

The loss-threshold attack each site runs during the federation's evaluation (ppml.federated.local_training) is
weak at low false-positive rates, where the gate's ``max_membership_inference_tpr_at_low_fpr`` is set. The central
lifecycle adds offline LiRA (Carlini et al. 2022) for that; this module does the same per site: members are the
site's training records, non-members its test records, and ``evaluation.reference_models`` reference models are
trained on the site's validation split (disjoint from both), each on its own slice.

The reference models mimic the site's training: with example-level DP they run ppml's DP-SGD at the site's
epsilon, epochs (rounds x local epochs), batch size and clip bound. They are DP trainings on the site's records
whose attack result is released, so they are charged to the site's ledger scope through the reservation path
(:class:`ppml.evaluation.charged_reference.ChargedReferenceTraining`, as in the central ``membership_inference``):
refused over the lifetime budget, pre-charged before the first step. With client-level DP a site trains without
per-example noise, so a mimicking reference model is not a DP release and could not be charged: LiRA is not run
(the loss-threshold attack still is) and the result says why.

Only the attack's aggregates leave the site (AUC, TPR at the low FPRs); a site whose validation split is too
small for the reference models gets an error entry, which the gate counts as a failure of the TPR requirement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppml.errors import PPMLError
from ppml.evaluation.charged_reference import ChargedReferenceTraining
from ppml.evaluation.membership_inference import lira_offline_attack
from ppml.federated.accounting import SitePlan, site_scope
from ppml.federated.audit import site_audit_setup
from ppml.federated.local_training import TorchScorer, load_site_splits, new_model, set_weights
from ppml.federated.runner import FederatedOutcome
from ppml.ledger import LifetimeBudget, PrivacyLedger
from ppml.policy import LoadedPolicy
from ppml.training.data import TabularSplit

LIRA_PURPOSE = "federated LiRA reference models"
#: Why client-level DP runs no LiRA (shown in the report and the gate's scope).
CLIENT_LEVEL_NOTE = (
    "not run: with client-level DP a site trains without per-example noise, so a mimicking reference model "
    "would be a non-DP use of the site's records; the loss-threshold attack is the site's membership test"
)


def lira_required(loaded: LoadedPolicy) -> bool:
    """Example-level DP with reference models in the policy."""
    fed = loaded.policy.training.federation
    return fed is not None and fed.dp_mode == "example" and loaded.policy.evaluation.reference_models > 0


def _federated_scorer(loaded: LoadedPolicy, outcome: FederatedOutcome) -> TorchScorer:
    training = loaded.policy.training
    hidden = list(training.hidden_sizes) if training.model == "mlp" else []
    model = new_model(hidden, len(outcome.feature_names), training.seed)
    set_weights(model, outcome.weights)
    return TorchScorer(model)


def site_lira(
    loaded: LoadedPolicy,
    site: str,
    site_dir: Path,
    plan: SitePlan,
    outcome: FederatedOutcome,
    ledger: PrivacyLedger,
    *,
    request_key: str,
    dagster_run_id: str | None = None,
) -> dict[str, Any]:
    """One site's offline LiRA; a refusal (budget) or a pool too small is reported, not raised."""
    names = list(outcome.feature_names)
    splits = {
        name: TabularSplit(split.X, split.y, tuple(names)) for name, split in load_site_splits(site_dir, names).items()
    }
    config, dp, _ = site_audit_setup(loaded, plan)
    charged = ChargedReferenceTraining(
        ledger=ledger,
        scope=site_scope(loaded.policy.dataset.id, site),
        lifetime=LifetimeBudget(loaded.policy.privacy.lifetime_epsilon_budget, plan.delta),
        config=config,
        dp=dp,
        request_key=f"{LIRA_PURPOSE} {request_key}",
        dagster_run_id=dagster_run_id,
    )
    try:
        result = lira_offline_attack(
            _federated_scorer(loaded, outcome),
            splits["train"],
            splits["test"],
            splits["validation"],
            charged,
            loaded.policy.evaluation.reference_models,
            name=f"federated@{site}",
            seed=loaded.policy.training.seed,
        )
    except BaseException as error:
        charged.fail(error)  # the reservations keep what they were pre-charged
        if not isinstance(error, PPMLError):
            raise
        return {"error": str(error).splitlines()[0], "ledger_runs": charged.to_dict()["ledger_runs"]}
    ledger_runs = charged.settle()
    low_fpr = loaded.policy.privacy.low_fpr
    return {
        "attack": result.attack,
        "auc": float(result.roc_auc),
        "low_fpr": low_fpr,
        "tpr_at_low_fpr": float(result.tpr_at(low_fpr)),
        "n_members": result.n_members,
        "n_non_members": result.n_non_members,
        "n_reference_models": loaded.policy.evaluation.reference_models,
        "ledger_runs": ledger_runs,
    }


def lira_sites(
    loaded: LoadedPolicy,
    site_dirs: dict[str, Path],
    outcome: FederatedOutcome,
    ledger: PrivacyLedger,
    *,
    request_key: str,
    dagster_run_id: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every site's LiRA (policy order) when :func:`lira_required`; for client-level DP a note per site."""
    fed = loaded.policy.training.federation
    if fed is None or loaded.policy.evaluation.reference_models == 0:
        return {}
    if not lira_required(loaded):
        return {site.name: {"note": CLIENT_LEVEL_NOTE} for site in fed.sites}
    return {
        site.name: site_lira(
            loaded,
            site.name,
            site_dirs[site.name],
            outcome.plans[site.name],
            outcome,
            ledger,
            request_key=request_key,
            dagster_run_id=dagster_run_id,
        )
        for site in fed.sites
    }
