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
    "k_anonymity": "every equivalence class of the released data holds at least k records, over the quasi-identifiers "
    "and every released column an attacker could know",
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
    "utility_balanced_accuracy_above_trivial": "balanced accuracy beats the class prior with confidence: its 95% "
    "CI lower bound reaches 0.5 (1/K for K classes) plus the policy's margin, whatever the accuracy objective",
    "utility_roc_auc_above_trivial": "ROC AUC beats a constant score with confidence: its 95% CI lower bound "
    "reaches 0.5 plus the policy's margin",
    "utility_gap_vs_baseline": "accuracy lost to privacy versus the tuned non-private baseline within the limit",
    "group_error_rate_gap": "false-positive and false-negative rates of the protected groups differ, beyond their "
    "95% intervals, by at most the policy's limit",
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
    """Judge every requirement on the collected evidence (the sections of evidence.json), in REQUIREMENTS order."""
    audit = evidence.get("audit")
    return [
        *_anonymization_verdicts(policy, evidence["anonymization"]),
        *_budget_verdicts(policy, evidence["training"], evidence["ledger"]),
        *_attack_verdicts(policy, evidence["privacy_evaluation"]),
        _audit_verdict(audit) if audit else _not_required("empirical_epsilon_audit"),
        *utility_gate_verdicts(policy, evidence["model_evaluation"]),
        _leakage_verdict(evidence["leakage"]),
    ]


def _anonymization_verdicts(policy: Policy, anonymization: dict[str, Any]) -> list[Verdict]:
    """k-anonymity, l-diversity, t-closeness, the suppression limit and the re-identification risk."""
    privacy = policy.privacy
    covered = anonymization.get("k_attributes") or list(policy.schema_.quasi_identifiers)
    return [
        _at_least(
            "k_anonymity",
            anonymization["min_class_size"],
            privacy.k,
            f"over {len(covered)} attributes an attacker could know: {', '.join(covered)}",
            classes=anonymization["classes"],
            attributes=covered,
        ),
        _l_diversity_verdict(policy, anonymization.get("l_diversity", [])),
        _t_closeness_verdict(policy, anonymization.get("t_closeness", [])),
        _at_most(
            "suppression_limit",
            anonymization["suppressed_share"],
            privacy.suppression_limit,
            f"{anonymization['suppressed_records']} of {anonymization['input_records']} records suppressed",
        ),
        _at_most(
            "reidentification_risk",
            anonymization["risk_after"]["prosecutor_highest"],
            privacy.max_reidentification_risk,
            f"before anonymization: {anonymization['risk_before']['prosecutor_highest']:.4f}",
            before=anonymization["risk_before"],
            after=anonymization["risk_after"],
        ),
    ]


def _l_diversity_verdict(policy: Policy, l_results: list[dict[str, Any]]) -> Verdict:
    models = policy.privacy.l_diversity
    if not models:
        return _not_required("l_diversity")
    failing = [r for r in l_results if not r["satisfied"]]
    worst = min((r["achieved"] for r in l_results), default=None)
    return Verdict(
        "l_diversity",
        REQUIREMENTS["l_diversity"],
        worst,
        ", ".join(f"{m.variant} l={m.l:g} on {m.attribute}" for m in models),
        bool(l_results) and not failing,
        "; ".join(f"{r['attribute']}: {r['achieved']:g}" for r in l_results),
        {"per_attribute": l_results},
    )


def _t_closeness_verdict(policy: Policy, t_results: list[dict[str, Any]]) -> Verdict:
    models = policy.privacy.t_closeness
    if not models:
        return _not_required("t_closeness")
    worst = max((r["achieved"] for r in t_results), default=None)
    passed = bool(t_results) and all(r["satisfied"] for r in t_results)
    limit = ", ".join(f"t={m.t:g} on {m.attribute}" for m in models)
    return Verdict(
        "t_closeness", REQUIREMENTS["t_closeness"], worst, limit, passed, evidence={"per_attribute": t_results}
    )


def _budget_verdicts(policy: Policy, training: dict[str, Any], ledger: dict[str, Any]) -> list[Verdict]:
    """The model's epsilon against the per-run target, and everything composed against the lifetime budget."""
    privacy = policy.privacy
    return [
        _at_most(
            "epsilon_within_target",
            training["epsilon"],
            privacy.epsilon,
            f"delta {training['delta']:g} (target {training.get('target_delta', privacy.delta)}), "
            f"accountant {training['accountant']}",
            delta=training["delta"],
        ),
        _at_most(
            "lifetime_budget",
            ledger.get("spent_all_runs", ledger["spent_after"]),
            privacy.lifetime_epsilon_budget,
            f"spent before this run {ledger['spent_before']:.4f}; this model {ledger['charged']:.4f}; "
            "every run composed (audit included)",
            scope=ledger.get("scope", {}),
        ),
    ]


def _attack_verdicts(policy: Policy, attacks: dict[str, Any]) -> list[Verdict]:
    """The strongest membership-inference attack on the DP model: its AUC and its TPR at a low FPR."""
    privacy = policy.privacy
    attack = attacks["strongest_attack_on_dp_model"]
    return [
        _at_most(
            "membership_inference_auc",
            attack["auc"],
            privacy.max_membership_inference_auc,
            f"strongest attack: {attack['name']}",
            attacks=attacks["summary"],
        ),
        _at_most(
            "membership_inference_tpr_at_low_fpr",
            attack["tpr_at_low_fpr"],
            privacy.max_membership_inference_tpr_at_low_fpr,
            f"TPR at FPR {privacy.low_fpr:g}, attack {attack['name']}",
        ),
    ]


def _leakage_verdict(leakage: dict[str, Any]) -> Verdict:
    return Verdict(
        "no_identifier_leakage",
        REQUIREMENTS["no_identifier_leakage"],
        len(leakage["findings"]),
        0,
        not leakage["findings"],
        f"scanned: {', '.join(leakage['scanned'])}",
        {"findings": leakage["findings"]},
    )


def utility_gate_verdicts(policy: Policy, utility: dict[str, Any]) -> list[Verdict]:
    """The utility gates, in REQUIREMENTS order. The two trivial-predictor verdicts are built in: a model that
    predicts the majority class for everyone can beat a policy's ``min_accuracy`` (80% on an 80/20 label), but
    its balanced accuracy and ROC AUC are 0.5 exactly, so it is refused whatever the objectives say."""
    objectives = policy.objectives
    dp = utility["dp"]
    verdicts = [
        _at_least("utility_accuracy", dp["accuracy"], objectives.min_accuracy),
        _at_least("utility_roc_auc", dp["roc_auc"], objectives.min_roc_auc),
    ]
    trivial = utility.get("trivial") or {}
    for metric in ("balanced_accuracy", "roc_auc"):
        low, high = (utility.get("dp_ci") or {}).get(metric) or (None, None)
        # 0.5 for both on a binary label; balanced accuracy 1/K on K classes (the macro one-vs-rest AUC stays 0.5)
        level = float(trivial.get(metric, 0.5))
        classes = f" on {trivial['n_classes']} classes" if "n_classes" in trivial else ""
        detail = (
            f"{metric.replace('_', ' ')} {_fmt(dp.get(metric))} (95% CI {_fmt(low)}-{_fmt(high)}); "
            f"the trivial predictor reaches {level:.4g}{classes}"
            + (f" (and accuracy {trivial['accuracy']:.4f}, the majority share)" if "accuracy" in trivial else "")
        )
        verdicts.append(
            _at_least(f"utility_{metric}_above_trivial", low, level + objectives.min_margin_over_trivial, detail)
        )
    baseline = utility.get("baseline")
    if baseline is not None:
        gap = round(baseline["accuracy"] - dp["accuracy"], 6)
        chosen = utility.get("baseline_model") or {}
        detail = "tuned baseline minus DP accuracy" + (f" (baseline: {chosen['family']})" if chosen else "")
        verdicts.append(_at_most("utility_gap_vs_baseline", gap, objectives.max_utility_gap, detail))
    else:
        verdicts.append(_not_required("utility_gap_vs_baseline"))
    if policy.schema_.protected_attributes:
        rates = utility.get("group_error_rates")
        verdicts.append(
            _at_most(
                "group_error_rate_gap",
                rates["largest_evidenced_gap"] if rates else None,
                objectives.max_group_error_rate_gap,
                rates["detail"] if rates else "no disaggregated error rates in the evidence",
                **({"attributes": rates["attributes"]} if rates else {}),
            )
        )
    else:
        verdicts.append(_not_required("group_error_rate_gap"))
    return verdicts


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _audit_verdict(audit: dict[str, Any]) -> Verdict:
    """The strongest empirical lower bound (black-box and white-box audits) against its run's claimed epsilon;
    the white-box audit's mechanism checks (noise, sampling rate, sampling law) must also accept the claim."""
    named = [("black-box", audit if "epsilon_lower_bound" in audit else None), ("white-box", audit.get("whitebox"))]
    audits = [(name, a) for name, a in named if a]
    strongest = max((a for _, a in audits), key=lambda a: a["epsilon_lower_bound"] - a["claimed_epsilon"])
    within = all(a["epsilon_lower_bound"] <= a["claimed_epsilon"] + 1e-12 for _, a in audits)
    whitebox = audit.get("whitebox") or {}
    conforming = not whitebox.get("mechanism_alarm", False)
    within = within and not whitebox.get("bound_alarm", False)  # the claimed curve itself refuted
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
