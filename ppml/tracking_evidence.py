"""What an MLflow user expects to find about a training run once it has been judged: the test metrics, the
membership-inference results, the empirical-epsilon audit (its own run), the report and evidence.json as
artifacts, and a model version that says in words what it is.

Why here and not only in evidence.json: a data scientist compares runs in MLflow, not in report folders; the
registry is where a deployer decides. Only aggregates are logged (metrics, bounds, the report, which
``ppml.reporting.write_report`` has already checked for personal values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Tag of the audit run (its role beside "selection", "candidate", "baseline").
ROLE_AUDIT = "audit"


@dataclass(frozen=True)
class EvidenceRecord:
    """Where the evidence went: the training run, the audit run (if any), the model version."""

    training_run_id: str
    audit_run_id: str | None
    model_name: str
    model_version: str
    artifact_path: str


def _finite(values: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def evaluation_metrics(evidence: Mapping[str, Any]) -> dict[str, float]:
    """Test metrics, attack metrics and audit bounds under stable MLflow metric names."""
    utility = evidence.get("model_evaluation") or {}
    metrics = {f"test_{name}": value for name, value in (utility.get("dp") or {}).items()}
    for name, (low, high) in (utility.get("dp_ci") or {}).items():
        metrics |= {f"test_{name}_ci_low": low, f"test_{name}_ci_high": high}
    attacks = evidence.get("privacy_evaluation") or {}
    for row in attacks.get("summary") or []:
        prefix = f"mia_{row['attack']}".replace("-", "_").replace(" ", "_").lower()
        metrics |= {
            f"{prefix}_auc": row.get("auc"),
            f"{prefix}_advantage": row.get("advantage"),
            f"{prefix}_tpr_at_0_1pct_fpr": row.get("tpr_at_0_1pct_fpr"),
            f"{prefix}_tpr_at_1pct_fpr": row.get("tpr_at_1pct_fpr"),
        }
    strongest = attacks.get("strongest_attack_on_dp_model") or {}
    metrics["mia_strongest_auc"] = strongest.get("auc")
    metrics["mia_strongest_tpr_at_low_fpr"] = strongest.get("tpr_at_low_fpr")
    metrics |= audit_metrics(evidence.get("audit"))
    checks = evidence.get("checks") or []
    metrics |= {"compliance_checks_passed": sum(bool(c["passed"]) for c in checks), "compliance_checks": len(checks)}
    return _finite(metrics)


def audit_metrics(audit: Mapping[str, Any] | None) -> dict[str, float]:
    """The audit's bounds (black-box and white-box) as ``audit_*`` metrics ({} when no audit ran)."""
    if not audit:
        return {}
    metrics = {
        "audit_epsilon_lower_bound": audit.get("epsilon_lower_bound"),
        "audit_claimed_epsilon": audit.get("claimed_epsilon"),
        "audit_alarm": float(bool(audit["alarm"])) if "alarm" in audit else None,
    }
    whitebox = audit.get("whitebox") or {}
    if whitebox:
        metrics |= {
            "audit_whitebox_epsilon_lower_bound": whitebox.get("epsilon_lower_bound"),
            "audit_whitebox_max_achievable_bound": whitebox.get("max_achievable_bound"),
            "audit_whitebox_alarm": float(bool(whitebox.get("alarm"))),
        }
    return _finite(metrics)


def log_audit_run(
    client: Any,
    experiment_id: str,
    audit: Mapping[str, Any],
    *,
    parent_run_id: str | None,
    tags: Mapping[str, str],
) -> str:
    """The empirical-epsilon audit as its own MLflow run (a child of the training's selection run): it trains on
    real records and spends epsilon, so it belongs beside the runs it audits, not only in evidence.json."""
    from mlflow.entities import Metric, Param, RunTag

    all_tags = {"ppml.role": ROLE_AUDIT, "ppml.private": "true", **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name="dp-audit", tags=all_tags)
    params = {
        "canaries": audit.get("canaries"),
        "fault_injection": audit.get("fault_injection"),
        "gradient_canaries": (audit.get("whitebox") or {}).get("canaries"),
    }
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in audit_metrics(audit).items()],
        params=[Param(k, str(v)) for k, v in params.items() if v is not None],
        tags=[RunTag("ppml.audit_alarm", str(bool(audit.get("alarm"))).lower())],
    )
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id


def model_version_description(evidence: Mapping[str, Any]) -> str:
    """A registry description a deployer reads: what the model is, on which window, how private, how good."""
    training = evidence.get("training") or {}
    window = evidence.get("window") or {}
    utility = (evidence.get("model_evaluation") or {}).get("dp") or {}
    strongest = (evidence.get("privacy_evaluation") or {}).get("strongest_attack_on_dp_model") or {}
    audit = evidence.get("audit") or {}
    checks = evidence.get("checks") or []
    failing = [c["name"] for c in checks if not c["passed"]]
    parts = [
        f"DP-SGD {training.get('model', 'model')} for policy '{(evidence.get('policy') or {}).get('name')}', "
        f"as of {evidence.get('as_of')} on {window.get('first')}..{window.get('last')} "
        f"({window.get('partitions')} days).",
        f"Privacy: epsilon {_fmt(training.get('epsilon'))} (target {_fmt(training.get('target_epsilon'))}), "
        f"delta {_fmt(training.get('delta'))}.",
        f"Test: accuracy {_fmt(utility.get('accuracy'))}, ROC AUC {_fmt(utility.get('roc_auc'))}.",
        f"Strongest membership inference: AUC {_fmt(strongest.get('auc'))}.",
    ]
    if "epsilon_lower_bound" in audit:
        parts.append(f"Audit: empirical epsilon lower bound {_fmt(audit['epsilon_lower_bound'])}.")
    passed = len(checks) - len(failing)
    verdict = f"{passed} of {len(checks)} requirements passed"
    parts.append(f"Compliance: {verdict}." if not failing else f"Compliance: {verdict}; failing {', '.join(failing)}.")
    return " ".join(parts)


def attach_report(
    client: Any, run_id: str, report_html: Path, evidence_json: Path, artifact_path: str = "compliance"
) -> None:
    """report.html and evidence.json as artifacts of the training run (a later call replaces them)."""
    client.log_artifact(run_id, str(report_html), artifact_path)
    client.log_artifact(run_id, str(evidence_json), artifact_path)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


def record_evidence(
    client: Any, evidence: Mapping[str, Any], report_html: Path, evidence_json: Path, artifact_path: str = "compliance"
) -> EvidenceRecord:
    """Metrics, the report and evidence.json on the training run; metrics, tags and a description on the model
    version. Re-running for the same as-of day logs the metrics again (same step) and replaces the artifacts."""
    from mlflow.entities import Metric

    training = evidence["training"]
    run_id = training["mlflow_run_id"]
    metrics = evaluation_metrics(evidence)
    batch = [Metric(k, v, 0, 0) for k, v in metrics.items()]
    for start in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[start : start + 500])
    attach_report(client, run_id, report_html, evidence_json, artifact_path)
    name, version = training["model_name"], str(training["model_version"])
    client.update_model_version(name, version, description=model_version_description(evidence))
    for key in ("test_accuracy", "test_roc_auc", "mia_strongest_auc", "audit_epsilon_lower_bound"):
        if key in metrics:
            client.set_model_version_tag(name, version, f"ppml.{key}", f"{metrics[key]:.6g}")
    audit = evidence.get("audit") or {}
    return EvidenceRecord(run_id, audit.get("mlflow_run_id"), name, version, artifact_path)
