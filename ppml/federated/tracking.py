"""The federated run in MLflow: parameters, per-site and federation metrics, the model and its registry version.

Only aggregates are logged (site metrics, plans, round counts); the model's weights are the artifact.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ppml.federated.gate import Requirement
from ppml.federated.runner import FederatedOutcome
from ppml.policy import LoadedPolicy

PRODUCTION_ALIAS = "production"


def registered_name(loaded: LoadedPolicy) -> str:
    return f"ppml-{loaded.policy.name}"


def log_federated_run(
    client: Any, experiment_id: str, loaded: LoadedPolicy, outcome: FederatedOutcome, verdicts: list[Requirement]
) -> dict[str, Any]:
    """Log the run and register a model version; move ``production`` only when every requirement passed."""
    fed = loaded.policy.training.federation
    assert fed is not None
    run = client.create_run(experiment_id, tags={"ppml.policy": loaded.policy.name, "ppml.mode": "federated"})
    run_id = run.info.run_id
    params = {
        "dp_mode": fed.dp_mode,
        "secure_aggregation": fed.secure_aggregation,
        "rounds": fed.rounds,
        "sites": len(fed.sites),
        "min_sites": fed.min_sites,
        "local_epochs": fed.local_epochs,
        "policy_hash": loaded.content_hash[:16],
    }
    for key, value in params.items():
        client.log_param(run_id, key, str(value))
    for site, metrics in outcome.history.get("site_metrics", {}).items():
        for key, value in metrics.items():
            client.log_metric(run_id, f"{site}.{key}", float(value))
    for site, plan in outcome.plans.items():
        client.log_metric(run_id, f"{site}.epsilon", plan.epsilon)
        client.log_metric(run_id, f"{site}.rounds_done", outcome.rounds_done.get(site, 0))
    for site, lira in outcome.lira.items():
        for name in ("auc", "tpr_at_low_fpr"):
            if name in lira:
                client.log_metric(run_id, f"{site}.lira_{name}", float(lira[name]))
    for site, audit in outcome.audits.items():
        if "epsilon_lower_bound" in audit:
            client.log_metric(run_id, f"{site}.audit_epsilon_lower_bound", float(audit["epsilon_lower_bound"]))
            if "max_achievable_bound" in audit:
                client.log_metric(run_id, f"{site}.audit_max_achievable_bound", float(audit["max_achievable_bound"]))
            client.log_metric(run_id, f"{site}.audit_alarm", float(bool(audit["alarm"])))
    audit = outcome.client_audit or {}
    if "epsilon_lower_bound" in audit:  # client-level DP: the federation's canary-client audit
        client.log_metric(run_id, "federation.client_audit_epsilon_lower_bound", float(audit["epsilon_lower_bound"]))
        client.log_metric(run_id, "federation.client_audit_max_achievable_bound", float(audit["max_achievable_bound"]))
        client.log_metric(run_id, "federation.client_audit_alarm", float(bool(audit["alarm"])))
    client.log_metric(run_id, "federation.seconds", float(outcome.history.get("seconds", 0.0)))
    passed = all(v.passed for v in verdicts)
    with tempfile.TemporaryDirectory() as folder:
        np.savez(Path(folder) / "model.npz", *outcome.weights)
        (Path(folder) / "federation.json").write_text(
            json.dumps(
                {
                    **outcome.summary(),
                    "feature_names": outcome.feature_names,
                    "requirements": [v.to_dict() for v in verdicts],
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        client.log_artifacts(run_id, folder, artifact_path="federated_model")
    client.set_terminated(run_id)
    name = registered_name(loaded)
    try:
        client.get_registered_model(name)
    except Exception:  # MLflow raises its own RestException for a missing model
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/federated_model"
    version = client.create_model_version(name, source, run_id=run_id, tags={"ppml.gate": str(passed).lower()})
    if passed:
        client.set_registered_model_alias(name, PRODUCTION_ALIAS, version.version)
    return {"mlflow_run_id": run_id, "registered_model": name, "version": int(version.version), "promoted": passed}
