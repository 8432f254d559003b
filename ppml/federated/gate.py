"""The federated model's gate: the policy's requirements checked on what the sites and the ledger report.

The evaluation engines run *inside each site* on the site's own test split and training records (utility, the
FPR/FNR gap between protected groups and the loss-threshold membership-inference attack, ppml.evaluation), so no
pooled test set is needed; the gate then
requires every site to meet the objectives (the model is deployed to all of them) and every site's ledger charge
to stay within the policy's epsilon. With example-level DP and ``evaluation.gradient_canaries``, each site's
white-box audit (ppml.federated.audit) must not refute the site's claimed privacy curve, as the central gate
requires of the central audit; a site whose audit did not run fails. With example-level DP and
``evaluation.reference_models``, each site's offline LiRA (ppml.federated.site_lira) must keep the TPR at the
policy's low FPR within its limit, and the AUC judged is the stronger of the two attacks'. With client-level DP
and ``evaluation.gradient_canaries``, the federation's canary-client audit (ppml.federated.client_audit) must not
refute the client-level claim (scope ``(federation)``); an audit that did not run fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ppml.federated.runner import FederatedOutcome
from ppml.policy import Policy


@dataclass(frozen=True)
class Requirement:
    requirement: str
    scope: str
    measured: float | None
    limit: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _at_least(name: str, scope: str, value: float | None, limit: float) -> Requirement:
    return Requirement(name, scope, value, limit, value is not None and value >= limit)


def _at_most(name: str, scope: str, value: float | None, limit: float) -> Requirement:
    return Requirement(name, scope, value, limit, value is not None and value <= limit + 1e-9)


def _audit_requirement(site: str, audit: dict[str, Any] | None, epsilon: float) -> Requirement:
    """The audit's lower bound against its claimed epsilon; fails on an alarm (bound or mechanism check)."""
    if not audit or "epsilon_lower_bound" not in audit:
        return Requirement("whitebox_epsilon_within_claim", site, None, epsilon, False)
    bound, claimed = float(audit["epsilon_lower_bound"]), float(audit["claimed_epsilon"])
    return Requirement("whitebox_epsilon_within_claim", site, bound, claimed, not audit["alarm"])


def _strongest_auc(loss_threshold_auc: float | None, lira: dict[str, Any] | None) -> float | None:
    """The gate judges the strongest attack, as the central gate does: the higher of the two AUCs."""
    if loss_threshold_auc is None:
        return None
    return max(float(loss_threshold_auc), float((lira or {}).get("auc", 0.0)))


FEDERATION_SCOPE = "(federation)"  # no site name can be it (SITE_NAME: lowercase letters, digits, _)


def _client_audit_requirement(audit: dict[str, Any] | None, epsilon: float) -> Requirement:
    """The client-level audit's bound against the claimed epsilon; fails on an alarm (bound or noise check)."""
    if not audit or "epsilon_lower_bound" not in audit:
        return Requirement("client_level_epsilon_within_claim", FEDERATION_SCOPE, None, epsilon, False)
    bound, claimed = float(audit["epsilon_lower_bound"]), float(audit["claimed_epsilon"])
    return Requirement("client_level_epsilon_within_claim", FEDERATION_SCOPE, bound, claimed, not audit["alarm"])


def federated_requirements(policy: Policy, outcome: FederatedOutcome) -> list[Requirement]:
    """One verdict per requirement and site (a site that did not evaluate fails every utility requirement), then
    the federation's (client-level audit)."""
    fed = policy.training.federation
    assert fed is not None
    audit_required = fed.dp_mode == "example" and policy.evaluation.gradient_canaries > 0
    lira_required = fed.dp_mode == "example" and policy.evaluation.reference_models > 0
    verdicts = []
    for site in fed.sites:
        metrics = outcome.history.get("site_metrics", {}).get(site.name, {})
        plan = outcome.plans[site.name]
        verdicts += [
            _at_least("min_accuracy", site.name, metrics.get("test_accuracy"), policy.objectives.min_accuracy),
            _at_least("min_roc_auc", site.name, metrics.get("test_roc_auc"), policy.objectives.min_roc_auc),
            _at_most(
                "max_membership_inference_auc",
                site.name,
                _strongest_auc(metrics.get("mia_auc"), outcome.lira.get(site.name)),
                policy.privacy.max_membership_inference_auc,
            ),
            _at_most("epsilon", site.name, plan.epsilon, policy.privacy.epsilon),
        ]
        if policy.schema_.protected_attributes:  # as the central gate: the gap beyond the groups' intervals
            verdicts.append(
                _at_most(
                    "max_group_error_rate_gap",
                    site.name,
                    metrics.get("group_error_rate_gap"),
                    policy.objectives.max_group_error_rate_gap,
                )
            )
        if audit_required:
            verdicts.append(_audit_requirement(site.name, outcome.audits.get(site.name), plan.epsilon))
        if lira_required:  # a site whose LiRA did not run (no entry, or an error) fails
            verdicts.append(
                _at_most(
                    "max_membership_inference_tpr_at_low_fpr",
                    site.name,
                    (outcome.lira.get(site.name) or {}).get("tpr_at_low_fpr"),
                    policy.privacy.max_membership_inference_tpr_at_low_fpr,
                )
            )
    if fed.dp_mode == "client" and policy.evaluation.gradient_canaries > 0:
        claimed = outcome.plans[fed.sites[0].name].epsilon
        verdicts.append(_client_audit_requirement(outcome.client_audit, claimed))
    return verdicts
