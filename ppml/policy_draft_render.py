"""Render a drafted policy as commented YAML: every guess carries a ``# CONFIRM:`` line saying what was guessed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ppml.special_categories import special_category_columns

if TYPE_CHECKING:
    from ppml.policy_draft import DraftRoles

MISSING_EVENT_DATE = "event_date"
#: A label whose majority class holds this share is imbalanced: models are selected on balanced accuracy.
IMBALANCED_MAJORITY = 0.7
_GAP_NOTE = [
    "  # CONFIRM: the accuracy the DP model may lose to a tuned non-private baseline; balanced selection gives up",
    "  # accuracy for the minority class, so review this limit for an imbalanced label.",
]
_IMBALANCED_TRAINING = [
    "training:",
    "  # CONFIRM: the label is imbalanced: candidates are compared on balanced accuracy (docs/training.md), the",
    "  # minority class is not traded away for the majority rate.",
    "  selection_metric: balanced_accuracy",
]


def quote(value: object) -> str:
    """A YAML scalar (JSON is valid YAML and quotes strings YAML would otherwise reinterpret, e.g. 'no')."""
    return json.dumps(value)


def _flow(value: object) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _schema_lines(roles: DraftRoles) -> list[str]:
    lines = ["schema:", f"  subject_id: {quote(roles.subject_id)}"]
    lines.append(f"  # CONFIRM: '{roles.subject_id}' identifies the data subject (erasure requests refer to it).")
    if roles.event_date is None:
        derive = f" (e.g. from {', '.join(roles.date_candidates)})" if roles.date_candidates else ""
        lines.append(
            f"  # CONFIRM: the data has NO date column. Add '{MISSING_EVENT_DATE}' (YYYY-MM-DD, the day each "
            f"record happened){derive} before collection."
        )
        lines.append(f"  event_date: {MISSING_EVENT_DATE}")
    else:
        lines.append(f"  # CONFIRM: '{roles.event_date}' dates each record (the daily partition key).")
        lines.append(f"  event_date: {quote(roles.event_date)}")
    lines.append("  direct_identifiers:")
    for column, (action, reason) in roles.direct.items():
        lines.append(f"    {quote(column)}: {action}  # CONFIRM: {reason}")
    lines.append("  quasi_identifiers:")
    for column, entry in roles.quasi.items():
        how = "interval spec from the data's range" if "hierarchy_spec" in entry else "hierarchy CSV written beside"
        lines.append(f"    {quote(column)}: {_flow(entry)}  # CONFIRM: known to an attacker? ({how})")
    lines.append("  # CONFIRM: sensitive attributes (protected by l-diversity) are not guessed; list them here.")
    lines.append("  sensitive_attributes: []")
    protected = [c for c in roles.quasi if roles.profiles[c].tokens & {"sex", "gender", "race", "ethnicity"}]
    lines.append(f"  protected_attributes: {_flow(protected)}  # CONFIRM: groups for the fairness report")
    candidates = ", ".join(roles.label_candidates[1:6]) or "none"
    lines.append(f"  # CONFIRM: the label to predict (other candidates: {candidates}).")
    if len(roles.label_values) > 2:
        lines.append(
            f"  # CONFIRM: '{roles.label}' has {len(roles.label_values)} classes; ppml trains '{roles.positive_value}'"
            f" against all the others (delete positive_value to train all {len(roles.label_values)} classes:"
            " a multi-class model over label_values)."
        )
    lines.append(f"  label: {{column: {quote(roles.label)}, positive_value: {quote(roles.positive_value)}}}")
    lines.append(f"  label_values: {_flow(roles.label_values)}")
    lines.append(
        "  # CONFIRM: candidate features in priority order (preparation admits them while risk stays bounded)."
    )
    lines.append(f"  features: {_flow(roles.features)}")
    lines.append(f"  numeric_columns: {_flow(list(roles.numeric))}")
    lines.append(
        "  # CONFIRM: plausible ranges (observed range widened by a tenth); collection refuses values outside."
    )
    lines.append("  value_ranges:")
    for column, (low, high) in roles.numeric.items():
        lines.append(f"    {quote(column)}: [{low:g}, {high:g}]")
    if roles.numeric_missing:
        lines.append(
            "  # CONFIRM: what an empty numeric cell means: drop the record, category (kept as its own 'missing'"
            " bin), or a public imputation value."
        )
        lines.append("  numeric_missing:")
        for column, rule in roles.numeric_missing.items():
            lines.append(f"    {quote(column)}: {rule}")
    for column, reason in roles.left_out.items():
        lines.append(f"  # CONFIRM: left out '{column}': {reason}.")
    return lines


def _release_lines(roles: DraftRoles) -> list[str]:
    """Release safety: every released non-QI column is tested as a re-identification handle."""
    lines = [
        "release:",
        "  # CONFIRM: released columns that are not quasi-identifiers are tested as re-identification handles;",
        "  # unlisted ones an attacker could know join the anonymization with an automatic hierarchy.",
        "  default_action: generalize",
        "  columns:",
        f"    {quote(roles.label)}: keep  # CONFIRM: the label is treated as unknown to an attacker (it is predicted)",
    ]
    for column in roles.numeric:
        if column not in roles.quasi and roles.profiles[column].distinct > 20:
            lines.append(f"    {quote(column)}: bin  # CONFIRM: many values: quantile bins, never the exact value")
    return lines


def _majority_share(roles: DraftRoles, frame: pd.DataFrame) -> float:
    labels = frame[roles.label].astype(str).str.strip()
    return float(labels.eq(roles.positive_value).mean())


def _window_days(roles: DraftRoles, frame: pd.DataFrame) -> int:
    if roles.event_date is None:
        return 90
    days = pd.to_datetime(frame[roles.event_date].str[:10], errors="coerce").dropna()
    return int((days.max() - days.min()).days + 1) if len(days) else 90


def _accountability_lines(roles: DraftRoles) -> list[str]:
    """What the records of processing and the DPIA need that no measurement tells; a special-category column
    (by name) needs an Art. 9(2) condition, which only the controller can state."""
    lines = [
        '  dpo: ""  # CONFIRM: contact of the data protection officer',
        "  recipients: []  # CONFIRM: who receives the data or the model's outputs",
        "  transfers: []  # CONFIRM: transfers to third countries and their safeguards (empty: none)",
    ]
    used = [*roles.features, *roles.quasi, roles.label]
    found = special_category_columns(list(dict.fromkeys(c for c in used if c)))
    if found:
        listed = ", ".join(f"{column} ({category})" for column, category in found.items())
        lines.append(
            f"  special_category_basis: archiving_research_statistics  # CONFIRM: {listed} look like GDPR Art. 9 "
            "data; state the Art. 9(2) condition that allows it, or remove the columns"
        )
    return lines


def render_policy(roles: DraftRoles, name: str, data: Path, frame: pd.DataFrame) -> str:
    """The whole draft policy as YAML text."""
    positive = _majority_share(roles, frame)
    baseline = max(positive, 1 - positive)
    imbalanced = baseline >= IMBALANCED_MAJORITY
    # balanced selection trades accuracy for the minority class: an accuracy objective near the majority rate
    # would refuse every useful model, and the gate's balanced-accuracy check already refuses the trivial one
    min_accuracy = 0.5 if imbalanced else max(round(baseline - 0.02, 2), 0.0)
    lines = [
        f"# ppml policy DRAFT for {data.name} ({len(frame)} records), written by `ppml init`.",
        "# Every '# CONFIRM:' line is a guess: review it with your data protection officer, then run",
        f"#   ppml validate-policy <this file> --data {data}",
        "# Paths are relative to this file. Every field: docs/policy.md.",
        "policy_version: 1",
        f"name: {quote(name)}",
        "# CONFIRM: who the people are; the lifetime privacy ledger and the pseudonym keys are keyed by this identity",
        "# (policies over the same people must share it).",
        "dataset:",
        f"  id: {quote(re.sub(r'[^a-z0-9.-]+', '-', name).strip('-.') or 'my-dataset')}",
        f"  subject_namespace: {quote(f'{data.name}/{roles.subject_id}')}",
        "use_case:",
        "  # CONFIRM: the purpose, regulation, lawful basis and retention are yours to state.",
        f"  purpose: {quote(f'CONFIRM: state why records of {data.name} are processed')}",
        "  regulation: GDPR",
        "  lawful_basis: legitimate_interests",
        f"  data_subjects: {quote(f'The people in {data.name}')}",
        "  retention_days: 365",
        '  controller: ""  # CONFIRM: the organisation responsible (GDPR Art. 30(1)(a))',
        *_accountability_lines(roles),
        *_schema_lines(roles),
        "collection:",
        "  # CONFIRM: days of data one training run uses (drafted: the span of the data).",
        f"  training_window_days: {_window_days(roles, frame)}",
        "privacy:",
        "  # Safe defaults: 5-anonymity, at most 5% suppressed, epsilon 1 per run, delta derived from n.",
        "  k: 5",
        "  suppression_limit: 0.05",
        "  epsilon: 1.0",
        "  delta: auto  # min(1e-5, 1/(10 n)) rounded down to a power of ten: always below 1/n",
        "  lifetime_epsilon_budget: 8.0",
        "  max_reidentification_risk: 0.2",
        "  max_membership_inference_auc: 0.6",
        "  max_membership_inference_tpr_at_low_fpr: 0.05",
        "  low_fpr: 0.01",
        "  dp_statistics_epsilon: 0.5",
        "objectives:",
        f"  # CONFIRM: always predicting the majority class scores accuracy {baseline:.3f}; set what the use case"
        " needs.",
        f"  min_accuracy: {min_accuracy}",
        "  min_roc_auc: 0.6",
        *(_GAP_NOTE if imbalanced else []),
        "  max_utility_gap: 0.05",
        *_release_lines(roles),
        *(_IMBALANCED_TRAINING if imbalanced else []),
        "evaluation:",
        "  reference_models: 1",
        "  audit_canaries: 0  # CONFIRM: the one-run epsilon audit (e.g. 1000 canaries) costs a second training run",
    ]
    return "\n".join(lines) + "\n"
