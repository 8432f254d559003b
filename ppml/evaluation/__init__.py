"""Lifecycle step 6: evaluation and compliance evidence.

Utility with bootstrap intervals and per-group gaps, membership-inference attacks (loss threshold, offline
LiRA), the one-run empirical epsilon audits (Steinke, Nasr & Jagielski 2023; black-box and white-box) and the
direct-identifier leakage scan. Every check returns a :class:`Verdict` (measured value, limit, passed) and every
result a dataclass with a JSON-serialisable ``to_dict()`` for Dagster metadata and evidence.json. See
docs/evaluation.md.
"""

from ppml.evaluation._common import ProbabilisticModel, Verdict
from ppml.evaluation.audit import (
    AuditResult,
    AuditSettings,
    Canaries,
    GuessOutcome,
    audit_from_scores,
    audit_verdict,
    canary_scores,
    epsilon_lower_bound,
    epsilon_p_value,
    make_canaries,
    run_one_run_audit,
)
from ppml.evaluation.audit_whitebox import WhiteBoxResult, WhiteBoxSettings, run_whitebox_audit, whitebox_verdict
from ppml.evaluation.error_rates import GroupErrorRates, group_error_rates
from ppml.evaluation.leakage import Finding, LeakageReport, leakage_verdict, scan_for_identifiers
from ppml.evaluation.membership_inference import (
    MIAResult,
    attack_metrics,
    check_mia_limits,
    lira_offline_attack,
    loss_threshold_attack,
    mia_verdicts,
    partition_holdout,
    strongest_attack,
    write_roc_curves,
)
from ppml.evaluation.objectives import (
    objective_warnings,
    trivial_margin_verdicts,
    trivial_predictor,
    utility_verdicts,
)
from ppml.evaluation.utility import (
    GroupBreakdown,
    MetricEstimate,
    ModelComparison,
    UtilityReport,
    compare_models,
    evaluate_utility,
    utility_report,
)

__all__ = [
    "AuditResult",
    "AuditSettings",
    "Canaries",
    "Finding",
    "GroupBreakdown",
    "GroupErrorRates",
    "GuessOutcome",
    "LeakageReport",
    "MIAResult",
    "MetricEstimate",
    "ModelComparison",
    "ProbabilisticModel",
    "UtilityReport",
    "Verdict",
    "WhiteBoxResult",
    "WhiteBoxSettings",
    "attack_metrics",
    "audit_from_scores",
    "audit_verdict",
    "canary_scores",
    "check_mia_limits",
    "compare_models",
    "epsilon_lower_bound",
    "epsilon_p_value",
    "evaluate_utility",
    "group_error_rates",
    "leakage_verdict",
    "lira_offline_attack",
    "loss_threshold_attack",
    "make_canaries",
    "mia_verdicts",
    "objective_warnings",
    "partition_holdout",
    "run_one_run_audit",
    "run_whitebox_audit",
    "scan_for_identifiers",
    "strongest_attack",
    "trivial_margin_verdicts",
    "trivial_predictor",
    "utility_report",
    "utility_verdicts",
    "whitebox_verdict",
    "write_roc_curves",
]
