"""Each guarantee in plain language: what an attacker can and cannot learn, in words and in the run's numbers.

The DP statements use the hypothesis-testing reading of (epsilon, delta)-DP (Kairouz et al. 2015): no test of
"was this person's record used?" can have a true-positive rate above e^epsilon times its false-positive rate
plus delta, and an attacker's odds that a person was in the data grow by at most e^epsilon. The audit's
strength is the largest lower bound its design could have produced had every guess been right (Steinke, Nasr
and Jagielski 2023, the same test the audit ran), so a reader sees what the audit could have detected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ppml.documents.facts import Facts, number, percent


@dataclass(frozen=True)
class Guarantee:
    title: str
    can_learn: str
    cannot_learn: str
    numbers: dict[str, str]
    fields: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "fields": list(self.fields)}


def _k_anonymity(f: Facts) -> Guarantee | None:
    smallest = f.get("anonymization.min_class_size")
    if smallest is None:
        return None
    attributes = ", ".join(f.get("anonymization.k_attributes") or [])
    diversity = "; ".join(
        f"every group has at least {number(m.get('smallest_distinct_values'))} different values of {m['attribute']}"
        for m in f.get("anonymization.l_diversity") or []
    )
    return Guarantee(
        title="Anonymized release (k-anonymity)",
        cannot_learn=(
            f"Someone who knows everything about a person that the release shows ({attributes}) still finds at "
            f"least {smallest} matching records among the {number(f.get('anonymization.records_out'))} released, "
            f"so they cannot tell which one is the person: at most a 1 in {smallest} guess."
        ),
        can_learn=(
            "They can learn what all records of that group have in common"
            + (f" ({diversity}, so a sensitive value is never certain)" if diversity else "")
            + "; and whether a person is in the data set at all is not hidden by k-anonymity."
        ),
        numbers={
            "smallest group": str(smallest),
            "required k": number(f.check("k_anonymity").get("limit")),
            "highest re-identification risk (prosecutor)": number(f.get("anonymization.risk_after.prosecutor_highest")),
            "risk before anonymization": number(f.get("anonymization.risk_before.prosecutor_highest")),
            "records suppressed": f"{f.get('anonymization.suppressed_records')} "
            f"({percent(f.get('anonymization.suppressed_share'))})",
        },
        fields=("anonymization.min_class_size", "anonymization.k_attributes", "anonymization.risk_after"),
    )


def _differential_privacy(f: Facts) -> Guarantee | None:
    # the released model's epsilon includes the model selection's share when candidates were compared
    epsilon = f.get("training.epsilon_including_selection", f.get("training.epsilon"))
    delta = f.get("training.delta")
    if epsilon is None or delta is None:
        return None
    factor = math.exp(float(epsilon))
    posterior = factor / (1 + factor)
    low_fpr = float(f.get("privacy_evaluation.strongest_attack_on_dp_model.low_fpr") or 0.01)
    tpr_bound = min(1.0, factor * low_fpr + float(delta))
    unit = "person" if f.get("training.subjects") else "record"
    return Guarantee(
        title=f"Differentially private model (per {unit})",
        cannot_learn=(
            f"Whether any one {unit}'s data was used to train the model: every output is at most {factor:.2f} "
            f"times more (or less) likely with it than without it. An attacker who thought it 50:50 that a {unit} "
            f"was in the training data can be at most {percent(posterior)} sure after studying the model, "
            f"except with probability {number(delta)}. No test that wrongly accuses {percent(low_fpr, 0)} of "
            f"outsiders can catch more than {percent(tpr_bound)} of those whose data was used."
        ),
        can_learn=(
            "What the model learned about the population as a whole (e.g. how education relates to the label), "
            "which is true of a person whether or not their data was used; and anything the released "
            "anonymized data shows."
        ),
        numbers={
            "epsilon": number(epsilon),
            "delta": number(delta),
            "odds factor e^epsilon": f"{factor:.3g}",
            f"bound on detection at {percent(low_fpr, 0)} false accusations": percent(tpr_bound),
            "measured: strongest attack's detection at that rate (an estimate on the test split)": percent(
                f.get("privacy_evaluation.strongest_attack_on_dp_model.tpr_at_low_fpr")
            ),
            "95% interval of that estimate (Wilson, members attacked)": _tpr_interval(f),
            "measured: strongest attack's AUC (0.5 = guessing)": number(
                f.get("privacy_evaluation.strongest_attack_on_dp_model.auc")
            ),
        },
        fields=(
            "training.epsilon_including_selection",
            "training.delta",
            "privacy_evaluation.strongest_attack_on_dp_model",
        ),
    )


def _tpr_interval(f: Facts) -> str:
    """The sampling interval of the measured detection rate: a point estimate just above the DP bound is within
    the bound when its interval is (the test split is small)."""
    from ppml.documents.plots import wilson_interval

    tpr = f.get("privacy_evaluation.strongest_attack_on_dp_model.tpr_at_low_fpr")
    members = f.get("privacy_evaluation.attacks.0.n_members")
    if tpr is None or not members:
        return number(None)
    low, high = wilson_interval(float(tpr) * int(members), int(members))
    return f"{percent(low)} to {percent(high)} ({members} members)"


def _lifetime(f: Facts) -> Guarantee | None:
    spent = f.get("ledger.spent_all_runs")
    if spent is None:
        return None
    budget = f.get("ledger.lifetime_budget")
    history = f.get("ledger_history")
    runs = f" ({len(history)} charged runs in the ledger)" if history is not None else ""
    return Guarantee(
        title="Lifetime privacy budget",
        cannot_learn=(
            f"Combining every model and statistic released about these people so far{runs}, an attacker's "
            f"odds still grow by at most e^{number(spent)} = "
            f"{math.exp(float(spent)):.3g}; the ledger refuses any run that would pass epsilon {number(budget)}."
        ),
        can_learn="The budget bounds what all releases together reveal; it does not cover copies made outside ppml.",
        numbers={
            "epsilon spent, all runs": number(spent),
            "lifetime budget": number(budget),
            "remaining": number(f.get("ledger.remaining_all_runs")),
        },
        fields=("ledger.spent_all_runs", "ledger.lifetime_budget", "ledger_history"),
    )


def audit_strength(audit: dict[str, Any]) -> float | None:
    """The largest epsilon lower bound the audit's design could have shown with every guess correct."""
    from ppml.evaluation.audit import epsilon_lower_bound

    details = audit.get("details") or {}
    settings = details.get("settings") or {}
    canaries, fractions = audit.get("canaries"), settings.get("guess_fractions")
    if not canaries or not fractions or audit.get("delta") is None:
        return None
    tests = int(details.get("bonferroni_tests") or len(fractions))
    confidence = 1 - (1 - float(audit.get("confidence", 0.95))) / tests
    return max(
        epsilon_lower_bound(int(canaries), r, r, delta=float(audit["delta"]), confidence=confidence)
        for r in (max(1, round(fraction * canaries)) for fraction in fractions)
    )


def _audit(f: Facts) -> Guarantee | None:
    audit = f.get("audit")
    if not audit or audit.get("epsilon_lower_bound") is None:
        return None
    strength = audit_strength(audit)
    claimed, found = audit.get("claimed_epsilon"), audit.get("epsilon_lower_bound")
    reach = (
        f"Even with every guess right, this audit ({audit.get('canaries')} canaries) could only have shown "
        f"epsilon >= {number(strength)}: it detects a broken guarantee only when the true epsilon is above that."
        if strength is not None
        else "The audit's design is not recorded, so its reach cannot be stated."
    )
    return Guarantee(
        title="Empirical audit of the DP claim",
        cannot_learn=(
            f"The audit planted canary records and tried to tell which were used: it showed epsilon >= "
            f"{number(found)} at {percent(audit.get('confidence'), 0)} confidence, against the claimed "
            f"{number(claimed)}. {reach}"
        ),
        can_learn=(
            "An audit bound below the claim is consistent with it but does not prove it; the proof is the "
            "accountant's computation. A bound above the claim would prove a bug."
        ),
        numbers={
            "audit lower bound": number(found),
            "claimed epsilon": number(claimed),
            "strongest bound this audit could show": number(strength),
            "alarm": number(audit.get("alarm")),
        },
        fields=("audit.epsilon_lower_bound", "audit.claimed_epsilon", "audit.canaries", "audit.details.settings"),
    )


def _whitebox_audit(f: Facts) -> Guarantee | None:
    """The white-box audit (gradient canaries) states its own strength: the largest bound its canaries allow."""
    audit = f.get("audit.whitebox")
    if not audit or audit.get("epsilon_lower_bound") is None:
        return None
    strength, found = audit.get("max_achievable_bound"), audit.get("epsilon_lower_bound")
    return Guarantee(
        title="White-box audit of the DP training",
        cannot_learn=(
            f"The audit watched every noisy update of a training run with {audit.get('canaries')} gradient canaries "
            f"and showed epsilon >= {number(found)} at {percent(audit.get('confidence'), 0)} confidence, against the "
            f"claimed {number(audit.get('claimed_epsilon'))}. With that many canaries it could have shown at most "
            f"epsilon >= {number(strength)}: it refutes gross errors, it cannot confirm the claim."
        ),
        can_learn=(
            "Its mechanism checks test what the proof assumes: the noise added at every step, the sampling rate and "
            "independent sampling (p-values in the report)."
        ),
        numbers={
            "audit lower bound": number(found),
            "claimed epsilon": number(audit.get("claimed_epsilon")),
            "strongest bound this audit could show": number(strength),
            "alarm": number(audit.get("alarm")),
        },
        fields=("audit.whitebox.epsilon_lower_bound", "audit.whitebox.max_achievable_bound"),
    )


def guarantees(evidence: dict[str, Any]) -> list[Guarantee]:
    """Every guarantee this run measured; one the run did not produce is left out, not described."""
    f = Facts(evidence)
    built = [_k_anonymity(f), _differential_privacy(f), _lifetime(f), _audit(f), _whitebox_audit(f)]
    return [g for g in built if g is not None]
