"""Lifecycle step 6c: the compliance gate — every policy requirement turned into a measured verdict.

Each requirement of the policy becomes one named verdict with the measured value, the limit, and the evidence
it was judged on. The Dagster layer turns each verdict into a blocking asset check, so a model can be promoted
only when every one passed; the report and evidence.json show the same table. A requirement that the policy
does not ask for is listed as "not required" rather than silently omitted, so an auditor sees the whole set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ppml.policy import Policy

NOT_REQUIRED = "not required by the policy"


@dataclass
class Verdict:
    name: str
    requirement: str
    measured: float | str | None
    limit: float | str | None
    passed: bool
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The names of the gate's checks, in report order, with what each one proves.
REQUIREMENTS: dict[str, str] = {
    "k_anonymity": "every equivalence class of the released data holds at least k records",
    "l_diversity": "every class holds well-represented values of each sensitive attribute",
    "t_closeness": "each class's sensitive distribution is within t of the overall one",
    "suppression_limit": "no more records suppressed than the policy allows",
    "reidentification_risk": "highest prosecutor re-identification risk within the policy's limit",
    "epsilon_within_target": "the accountant's epsilon of the deployed model is at most the target",
    "lifetime_budget": "the data subjects' lifetime epsilon, all runs composed, stays within budget",
    "membership_inference_auc": "membership-inference ROC AUC against the model within the limit",
    "membership_inference_tpr_at_low_fpr": "attack true-positive rate at the policy's low FPR within the limit",
    "empirical_epsilon_audit": "the canary audits' epsilon lower bounds (black-box and white-box) do not exceed the "
    "claimed epsilon, and the white-box checks of noise and sampling accept the claim",
    "utility_accuracy": "test accuracy meets the policy's objective",
    "utility_roc_auc": "test ROC AUC meets the policy's objective",
    "utility_gap_vs_baseline": "accuracy lost to privacy versus the non-private baseline within the limit",
    "no_identifier_leakage": "no direct identifier in features, model artifacts or MLflow params and tags",
}


def _at_most(name: str, measured: float | None, limit: float, detail: str = "", **evidence: Any) -> Verdict:
    passed = measured is not None and measured <= limit + 1e-12
    return Verdict(name, REQUIREMENTS[name], measured, limit, passed, detail, evidence)


def _at_least(name: str, measured: float | None, limit: float, detail: str = "", **evidence: Any) -> Verdict:
    passed = measured is not None and measured >= limit - 1e-12
    return Verdict(name, REQUIREMENTS[name], measured, limit, passed, detail, evidence)


def _not_required(name: str) -> Verdict:
    return Verdict(name, REQUIREMENTS[name], None, None, True, NOT_REQUIRED)


def evaluate_requirements(policy: Policy, evidence: dict[str, Any]) -> list[Verdict]:
    """Judge every requirement on the collected evidence (the sections of evidence.json)."""
    privacy, objectives = policy.privacy, policy.objectives
    anonymization = evidence["anonymization"]
    training = evidence["training"]
    ledger = evidence["ledger"]
    utility = evidence["model_evaluation"]
    attacks = evidence["privacy_evaluation"]
    verdicts: list[Verdict] = [
        _at_least("k_anonymity", anonymization["min_class_size"], privacy.k, classes=anonymization["classes"]),
    ]

    l_results = anonymization.get("l_diversity", [])
    if privacy.l_diversity:
        failing = [r for r in l_results if not r["satisfied"]]
        worst = min((r["achieved"] for r in l_results), default=None)
        verdicts.append(
            Verdict(
                "l_diversity",
                REQUIREMENTS["l_diversity"],
                worst,
                ", ".join(f"{m.variant} l={m.l:g} on {m.attribute}" for m in privacy.l_diversity),
                bool(l_results) and not failing,
                "; ".join(f"{r['attribute']}: {r['achieved']:g}" for r in l_results),
                {"per_attribute": l_results},
            )
        )
    else:
        verdicts.append(_not_required("l_diversity"))

    t_results = anonymization.get("t_closeness", [])
    if privacy.t_closeness:
        worst = max((r["achieved"] for r in t_results), default=None)
        passed = bool(t_results) and all(r["satisfied"] for r in t_results)
        limit = ", ".join(f"t={m.t:g} on {m.attribute}" for m in privacy.t_closeness)
        verdicts.append(
            Verdict(
                "t_closeness", REQUIREMENTS["t_closeness"], worst, limit, passed, evidence={"per_attribute": t_results}
            )
        )
    else:
        verdicts.append(_not_required("t_closeness"))

    verdicts.append(
        _at_most(
            "suppression_limit",
            anonymization["suppressed_share"],
            privacy.suppression_limit,
            f"{anonymization['suppressed_records']} of {anonymization['input_records']} records suppressed",
        )
    )
    verdicts.append(
        _at_most(
            "reidentification_risk",
            anonymization["risk_after"]["prosecutor_highest"],
            privacy.max_reidentification_risk,
            f"before anonymization: {anonymization['risk_before']['prosecutor_highest']:.4f}",
            before=anonymization["risk_before"],
            after=anonymization["risk_after"],
        )
    )
    verdicts.append(
        _at_most(
            "epsilon_within_target",
            training["epsilon"],
            privacy.epsilon,
            f"delta {training['delta']:g} (target {privacy.delta:g}), accountant {training['accountant']}",
            delta=training["delta"],
        )
    )
    verdicts.append(
        _at_most(
            "lifetime_budget",
            ledger.get("spent_all_runs", ledger["spent_after"]),
            privacy.lifetime_epsilon_budget,
            f"spent before this run {ledger['spent_before']:.4f}; this model {ledger['charged']:.4f}; "
            "every run composed (audit included)",
            scope=ledger.get("scope", {}),
        )
    )
    attack = attacks["strongest_attack_on_dp_model"]
    verdicts.append(
        _at_most(
            "membership_inference_auc",
            attack["auc"],
            privacy.max_membership_inference_auc,
            f"strongest attack: {attack['name']}",
            attacks=attacks["summary"],
        )
    )
    verdicts.append(
        _at_most(
            "membership_inference_tpr_at_low_fpr",
            attack["tpr_at_low_fpr"],
            privacy.max_membership_inference_tpr_at_low_fpr,
            f"TPR at FPR {privacy.low_fpr:g}, attack {attack['name']}",
        )
    )
    audit = evidence.get("audit")
    verdicts.append(_audit_verdict(audit) if audit else _not_required("empirical_epsilon_audit"))
    verdicts.append(_at_least("utility_accuracy", utility["dp"]["accuracy"], objectives.min_accuracy))
    verdicts.append(_at_least("utility_roc_auc", utility["dp"]["roc_auc"], objectives.min_roc_auc))
    baseline = utility.get("baseline")
    if baseline is not None:
        gap = round(baseline["accuracy"] - utility["dp"]["accuracy"], 6)
        verdicts.append(
            _at_most("utility_gap_vs_baseline", gap, objectives.max_utility_gap, "baseline minus DP accuracy")
        )
    else:
        verdicts.append(_not_required("utility_gap_vs_baseline"))
    leakage = evidence["leakage"]
    verdicts.append(
        Verdict(
            "no_identifier_leakage",
            REQUIREMENTS["no_identifier_leakage"],
            len(leakage["findings"]),
            0,
            not leakage["findings"],
            f"scanned: {', '.join(leakage['scanned'])}",
            {"findings": leakage["findings"]},
        )
    )
    return verdicts


def _audit_verdict(audit: dict[str, Any]) -> Verdict:
    """The strongest empirical lower bound (black-box and white-box audits) against its run's claimed epsilon;
    the white-box audit's mechanism checks (noise, sampling rate, sampling law) must also accept the claim."""
    named = [("black-box", audit if "epsilon_lower_bound" in audit else None), ("white-box", audit.get("whitebox"))]
    audits = [(name, a) for name, a in named if a]
    strongest = max((a for _, a in audits), key=lambda a: a["epsilon_lower_bound"] - a["claimed_epsilon"])
    within = all(a["epsilon_lower_bound"] <= a["claimed_epsilon"] + 1e-12 for _, a in audits)
    whitebox = audit.get("whitebox") or {}
    conforming = not whitebox.get("mechanism_alarm", False)
    parts = [
        f"{name}: {a['canaries']} canaries, bound {a['epsilon_lower_bound']:.3f} vs claimed "
        f"{a['claimed_epsilon']:.3f} ({a['confidence']:.0%} confidence)"
        for name, a in audits
    ]
    if whitebox:
        parts.append(f"white-box at most {whitebox['max_achievable_bound']:.2f} detectable")
        parts.append("mechanism checks " + ("passed" if conforming else "REJECT the claim: " + whitebox["message"]))
    return Verdict(
        "empirical_epsilon_audit",
        REQUIREMENTS["empirical_epsilon_audit"],
        strongest["epsilon_lower_bound"],
        strongest["claimed_epsilon"],
        within and conforming,
        "; ".join(parts),
        {"audit": audit},
    )


def failing(verdicts: list[Verdict]) -> list[str]:
    return [verdict.name for verdict in verdicts if not verdict.passed]
