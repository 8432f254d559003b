"""The HIPAA Safe Harbor checklist over the 18 identifier classes of 45 CFR 164.514(b)(2)(i), from the evidence.

For each class: the source columns that carried it and the action de-identification took; or, when no column
carried it, the checks that show it absent from the release — no released column's name has the class's
pattern, the values of every released text column were scanned for the class's shape where it has one
(telephone, e-mail, SSN, URL, IP address, five-digit ZIP), and the leakage scan found no raw identifier value in
the release, the model artifacts or MLflow. A class whose check failed is marked FAIL, never "absent".
"""

from __future__ import annotations

from typing import Any

from ppml.deidentification import SAFE_HARBOR_CATEGORIES, SAFE_HARBOR_MAX_AGE, safe_harbor_name_category
from ppml.documents.facts import Facts

GENERALIZED = {"zip3": "first three digits kept, low-population prefixes set to 000", "year": "reduced to the year"}


def _released_columns(f: Facts) -> list[str]:
    released = f.get("release_identifier_scan.columns_scanned") or []
    kept = f.get("deidentification.columns_out") or []
    return sorted(set(released) | set(kept) | set(f.get("anonymization.k_attributes") or []))


def _carried(f: Facts, category: str) -> list[dict[str, str]]:
    actions = f.get("data.identifier_actions") or {}
    return [
        {"column": column, "action": action, "detail": GENERALIZED.get(action, "")}
        for column, action in actions.items()
        if (safe_harbor_name_category(column) or "R") == category  # an unrecognised identifier is class R
    ]


def _absence_checks(f: Facts, category: str, released: list[str]) -> tuple[list[str], bool]:
    """The checks that show a class absent from the release, and whether they all held."""
    actions = f.get("data.identifier_actions") or {}
    generalized = {c for c, a in actions.items() if a in GENERALIZED}
    named = [c for c in released if safe_harbor_name_category(c) == category and c not in generalized]
    checks = [
        f"no released column's name matches the class ({len(released)} columns checked)"
        if not named
        else f"released columns whose name matches the class: {', '.join(named)}"
    ]
    held = not named
    matching = f.get(f"release_identifier_scan.distinct_values_matching.{category}")
    if matching is not None:
        scanned = f.get("release_identifier_scan.values_scanned")
        checks.append(f"{matching} of {scanned} distinct released text values have the class's shape")
        held = held and matching == 0
    findings = f.get("leakage.n_findings")
    if findings is not None:
        checks.append(f"leakage scan: {findings} raw identifier values found in release, model or MLflow")
        held = held and findings == 0
    return checks, held


def checklist(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per Safe Harbor class: treatment or absence checks, and a verdict."""
    f = Facts(evidence)
    released = _released_columns(f)
    rows = []
    for category, title in SAFE_HARBOR_CATEGORIES.items():
        carried = _carried(f, category)
        checks, held = _absence_checks(f, category, released)
        treatment = [f"{c['column']}: {c['action']}" + (f" ({c['detail']})" if c["detail"] else "") for c in carried]
        if category == "C" and f.get("deidentification.ages_top_coded") is not None:
            treatment.append(
                f"ages over {SAFE_HARBOR_MAX_AGE - 1} top-coded to {SAFE_HARBOR_MAX_AGE}: "
                f"{f.get('deidentification.ages_top_coded')} records in the window"
            )
        if category == "B" and f.get("deidentification.zip3_restricted_to_000") is not None:
            treatment.append(f"ZIP3 prefixes set to 000: {f.get('deidentification.zip3_restricted_to_000')} records")
        if carried:
            verdict = "handled" if held or all(c["action"] in GENERALIZED for c in carried) else "FAIL"
        else:
            verdict = "absent (checked)" if held else "FAIL"
        rows.append(
            {"category": category, "identifier": title, "treatment": treatment, "checks": checks, "verdict": verdict}
        )
    return rows


def expert_determination(evidence: dict[str, Any]) -> list[dict[str, str]]:
    """The measured risk figures an expert weighs under 45 CFR 164.514(b)(1), each with its evidence field."""
    f = Facts(evidence)
    rows = [
        ("attributes an attacker is assumed to know", "anonymization.k_attributes"),
        ("smallest equivalence class (k achieved)", "anonymization.min_class_size"),
        ("prosecutor risk, highest, before", "anonymization.risk_before.prosecutor_risk_highest"),
        ("prosecutor risk, highest, after", "anonymization.risk_after.prosecutor_risk_highest"),
        ("prosecutor risk, average, after", "anonymization.risk_after.prosecutor_risk_average"),
        ("journalist risk, highest, after", "anonymization.risk_after.journalist_risk_highest"),
        ("marketer risk, after", "anonymization.risk_after.marketer_risk"),
        ("share of records at risk above threshold, after", "anonymization.risk_after.records_at_risk"),
        ("risk threshold used", "anonymization.risk_after.risk_threshold"),
        ("sample uniqueness, before", "anonymization.risk_before.sample_uniqueness"),
        ("sample uniqueness, after", "anonymization.risk_after.sample_uniqueness"),
        ("records suppressed (share)", "anonymization.suppressed_share"),
        ("membership inference AUC on the DP model", "privacy_evaluation.strongest_attack_on_dp_model.auc"),
        ("membership inference TPR at low FPR", "privacy_evaluation.strongest_attack_on_dp_model.tpr_at_low_fpr"),
        ("DP epsilon of the model (incl. selection)", "training.epsilon_including_selection"),
        ("DP delta", "training.delta"),
    ]
    return [{"figure": label, "field": path, "value": f.get(path)} for label, path in rows if f.has(path)]
