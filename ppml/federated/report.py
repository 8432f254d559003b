"""The federated compliance report: one section per site (its checks, its ledger charge, its requirements) and
one for the federation (rounds, participants, registry), as evidence.json and report.html (aggregates only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ppml.federated.gate import FEDERATION_SCOPE, Requirement
from ppml.federated.runner import FederatedOutcome
from ppml.federated.site_prep import SitePreparation
from ppml.policy import LoadedPolicy
from ppml.private_files import private_dir

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


def federated_evidence(
    loaded: LoadedPolicy,
    preparations: dict[str, SitePreparation],
    outcome: FederatedOutcome,
    verdicts: list[Requirement],
    registry: dict[str, Any],
) -> dict[str, Any]:
    fed = loaded.policy.training.federation
    assert fed is not None
    sites = []
    for site in fed.sites:
        prep = preparations[site.name].to_dict()
        prep.pop("feature_names", None)  # labels of the site's release: kept in the MLflow artifact, not here
        sites.append(
            {
                "name": site.name,
                "preparation": prep,
                "plan": outcome.plans[site.name].to_dict(),
                "ledger_run": outcome.ledger_runs.get(site.name),
                "rounds_done": outcome.rounds_done.get(site.name, 0),
                "metrics": outcome.history.get("site_metrics", {}).get(site.name, {}),
                "audit": _audit_summary(outcome.audits.get(site.name)),
                "lira": outcome.lira.get(site.name),
                "requirements": [v.to_dict() for v in verdicts if v.scope == site.name],
            }
        )
    return {
        "policy": {
            "name": loaded.policy.name,
            "content_hash": loaded.content_hash,
            "dataset": loaded.policy.dataset.id,
        },
        "federation": {
            "dp_mode": fed.dp_mode,
            "secure_aggregation": fed.secure_aggregation,
            "rounds_planned": fed.rounds,
            "rounds": outcome.history.get("rounds", []),
            "model_bytes": outcome.history.get("model_bytes"),
            "seconds": outcome.history.get("seconds"),
            "passed": all(v.passed for v in verdicts),
            "registry": registry,
            "client_audit": _client_audit_summary(outcome.client_audit),
            "requirements": [v.to_dict() for v in verdicts if v.scope == FEDERATION_SCOPE],
        },
        "sites": sites,
    }


def _verdict(audit: dict[str, Any], extra: tuple[str, ...]) -> dict[str, Any]:
    """An audit's bound, claim, verdict and mechanism checks (never its per-canary scores), plus ``extra`` keys."""
    keys = (
        *("epsilon_lower_bound", "claimed_epsilon", "max_achievable_bound", "alarm", "message", "canaries"),
        *("mechanism_checks", "error", *extra),
    )
    return {k: audit[k] for k in keys if k in audit}


def _audit_summary(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    """The audit's verdict and bound, its mechanism checks and its ledger run (not its per-canary details)."""
    if audit is None:
        return None
    summary = _verdict(audit, ("site_mechanism", "ledger_run"))
    details = audit.get("details", {})
    summary["audit_mechanism"] = {
        "noise_multiplier": details.get("noise_multiplier"),
        "sample_rate": details.get("sample_rate"),
        "steps": audit.get("steps"),
    }
    return summary


def _client_audit_summary(audit: dict[str, Any] | None) -> dict[str, Any] | None:
    """The client-level audit's verdict, bound, noise check and audited mechanism (no per-canary scores)."""
    if audit is None:
        return None
    summary = _verdict(audit, ("rounds",))
    details = audit.get("details", {})
    summary["audit_mechanism"] = {
        k: details.get(k) for k in ("noise_multiplier", "clipping_norm", "slots_per_round", "secure_aggregation")
    }
    return summary


def write_federated_report(evidence: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """evidence.json and report.html (owner-only) in ``directory``."""
    directory = private_dir(Path(directory))
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    html = environment.get_template("federated_report.html.j2").render(e=evidence)
    written = []
    for name, text in (("evidence.json", json.dumps(evidence, indent=1, default=str)), ("report.html", html)):
        path = directory / name
        temporary = path.with_suffix(".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
        written.append(path)
    return written[0], written[1]
