"""Step 6c: the compliance gate. Every policy requirement is a named, blocking asset check on compliance_status.

``compliance_status`` gathers the evidence of the whole run (lineage, anonymization, training, ledger,
utility, attacks, audit, identifier scan) and judges every requirement. One blocking check per requirement
then passes or fails with its evidence in metadata; ``registered_model`` is downstream of all of them, so the
production alias can only move when every one passed. When something fails, compliance_status itself records
the refusal in the MLflow run and registry tags and writes the report, because nothing downstream will run.
"""

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    MetadataValue,
)

from ppml.anonymization.policy_config import config_from_policy
from ppml.compliance import NOT_REQUIRED, REQUIREMENTS, evaluate_requirements, failing
from ppml.deployment import decide_promotion
from ppml.evaluation import scan_for_identifiers
from ppml.policy import IdentifierAction, LoadedPolicy
from ppml.reporting import write_report
from ppml_assets.common import latest_metadata
from ppml_assets.data_quality import PAGE_KEY
from ppml_assets.document_facts import document_facts
from ppml_assets.evidence import build_evidence_pack
from ppml_assets.graph import policy_asset, policy_multi_asset_check
from ppml_assets.mlflow_evidence import record_in_mlflow
from ppml_assets.serving_monitoring import latest_serving_monitoring
from ppml_assets.settings import window_partition_keys
from resources import AssetStore, LedgerResource, MlflowResource, PolicyResource, PseudonymizationKey, WorkspacePaths


def _l_diversity_evidence(anonymized: pd.DataFrame, loaded: LoadedPolicy, violations: dict[str, int]) -> list[dict]:
    qis = [c for c in loaded.policy.schema_.quasi_identifiers if c in anonymized.columns]
    rows = []
    for model in loaded.policy.privacy.l_diversity:
        distinct = anonymized.groupby(qis, dropna=False, sort=False)[model.attribute].nunique()
        rows.append(
            {
                "attribute": model.attribute,
                "variant": model.variant,
                "required": model.l,
                "achieved": float(distinct.min()) if model.variant == "distinct" else float(model.l),
                "smallest_distinct_values": int(distinct.min()),
                "satisfied": violations.get(f"l_diversity:{model.attribute}", 0) == 0,
            }
        )
    return rows


def anonymization_evidence(anonymized: pd.DataFrame, report: dict, loaded: LoadedPolicy) -> dict[str, Any]:
    """k, l, t, suppression and risk as measured on the stored release (independently of the engine)."""
    from ppml.anonymization.verify import verify_release

    config = config_from_policy(loaded, source="compliance_status")
    safety = report.get("release_safety") or {}
    handles = [c for c in safety.get("handles", []) if c in anonymized.columns]
    qis = [c for c in loaded.policy.schema_.quasi_identifiers if c in anonymized.columns]
    # the k verdict covers every attribute an attacker could know: the QIs and the handles release safety kept
    sizes = anonymized.groupby([*qis, *handles], dropna=False, sort=False).size()
    violations = verify_release(anonymized, config, original_rows=report["records_in"], handles=handles)
    counts = {f"{v.rule}:{v.attribute}" if v.attribute else v.rule: v.classes or v.records for v in violations}
    return {
        **{
            key: report[key]
            for key in (
                "transformation",
                "quality",
                "search",
                "lattice_size",
                "transformations_checked",
                "seconds",
                "privacy_models",
                "records_out",
                "suppressed_records",
            )
        },
        "input_records": report["records_in"],
        "records_out": len(anonymized),
        "min_class_size": int(sizes.min()),
        "k_attributes": [*qis, *handles],
        "release_safety": safety,
        "classes": len(sizes),
        "equivalence_classes": len(sizes),
        "suppressed_share": report["suppressed_records"] / max(report["records_in"], 1),
        "l_diversity": _l_diversity_evidence(anonymized, loaded, counts),
        "t_closeness": [
            {
                "attribute": m.attribute,
                "t": m.t,
                "achieved": m.t if not counts.get(f"t_closeness:{m.attribute}") else None,
                "satisfied": not counts.get(f"t_closeness:{m.attribute}"),
            }
            for m in loaded.policy.privacy.t_closeness
        ],
        "risk_before": {
            "prosecutor_highest": report["risk_before"]["prosecutor_risk_highest"],
            **report["risk_before"],
        },
        "risk_after": {"prosecutor_highest": report["risk_after"]["prosecutor_risk_highest"], **report["risk_after"]},
        "violations": counts,
    }


def leakage_evidence(
    loaded: LoadedPolicy,
    raw_window: pd.DataFrame,
    feature_names: list[str],
    columns: list[str],
    mlflow: MlflowResource,
    run_id: str,
) -> dict[str, Any]:
    """Scan feature names, released columns, the model artifacts and MLflow params/tags for direct identifiers."""
    roles = loaded.policy.schema_
    identifiers = [
        column
        for column, action in roles.direct_identifiers.items()
        if action not in {IdentifierAction.ZIP3, IdentifierAction.YEAR}
    ]
    client = mlflow.client()
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="ppml-scan-") as scratch:
        artifact_dir = client.download_artifacts(run_id, "", scratch)
        report = scan_for_identifiers(
            identifiers,
            identifier_values={c: raw_window[c].astype(str).unique() for c in identifiers if c in raw_window.columns},
            feature_names=feature_names,
            column_names=columns,
            artifact_dir=Path(artifact_dir),
            params=run.data.params,
            tags=run.data.tags,
        )
    return report.to_dict()


def data_quality_results(instance: Any, run_id: str) -> list[dict[str, Any]]:
    """The blocking data-quality checks evaluated in this run (anonymization and cleaning). Collection's checks
    ran in earlier runs; they are blocking, so a de-identified partition exists only if they passed."""
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records
    results = []
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if evaluation.check_name in REQUIREMENTS:
            continue
        page = evaluation.metadata.get(PAGE_KEY)
        results.append(
            {
                "name": evaluation.check_name,
                "asset": evaluation.asset_key.to_user_string(),
                "passed": evaluation.passed,
                "page": page.value if page is not None else None,
            }
        )
    return results


def window_summary(instance: Any, as_of: str, days: list[str], asset_store: AssetStore) -> dict[str, Any]:
    excluded = 0
    collected = 0
    for day in days:
        metadata = latest_metadata(instance, asset_store.asset_key("raw_records"), day)
        per_day = metadata.get("rows_per_partition") or {}
        collected += int(per_day.get(day, {}).get("collected", 0))
        excluded += int(per_day.get(day, {}).get("excluded_by_erasure", 0))
    return {"first": days[0], "last": days[-1], "partitions": len(days), "collected": collected, "excluded": excluded}


#: compliance_status's upstream assets: the sinks of a refused version's lineage (its own output is not yet stored).
GATE_INPUTS = [
    "privacy_requirements",
    "anonymized_records",
    "training_features",
    "dp_model",
    "model_evaluation",
    "privacy_evaluation",
    "privacy_audit",
    "privacy_budget",
]


@policy_asset(group_name="compliance", kinds={"json"})
def compliance_status(
    context: AssetExecutionContext,
    privacy_requirements: dict,
    anonymized_records: pd.DataFrame,
    training_features: pd.DataFrame,
    dp_model: dict,
    model_evaluation: dict,
    privacy_evaluation: dict,
    privacy_audit: dict,
    privacy_budget: dict,
    policy: PolicyResource,
    mlflow: MlflowResource,
    asset_store: AssetStore,
    paths: WorkspacePaths,
    pseudonym_key: PseudonymizationKey,
    ledger: LedgerResource,
) -> dict:
    """Every requirement of the policy judged on the run's evidence; the table the gate's checks enforce."""
    loaded = policy.load()
    as_of = context.partition_key
    instance = context.instance
    days = window_partition_keys(as_of, loaded.policy.collection.training_window_days)
    key = asset_store.asset_key
    window = window_summary(instance, as_of, days, asset_store)
    raw_window = _identifier_window(asset_store, paths, pseudonym_key, days)
    anonymization_report = latest_metadata(instance, key("anonymized_records"), as_of)["anonymization_report"]
    feature_names = [c for c in training_features.columns if c not in ("label", "split")]
    evidence: dict[str, Any] = {
        "as_of": as_of,
        "dagster_run_id": context.run.run_id,
        "window": {"first": window["first"], "last": window["last"], "partitions": window["partitions"]},
        "policy": _policy_evidence(loaded),
        "data": _data_evidence(instance, asset_store, as_of, window, anonymization_report, loaded),
        "anonymization": anonymization_evidence(anonymized_records, anonymization_report, loaded),
        "preparation": {
            **latest_metadata(instance, key("cleaned_records"), as_of).get("preparation_report", {}),
            "max_share_below_k": loaded.policy.preparation.max_share_below_k,
        },
        "features": _features_evidence(training_features, feature_names),
        **_training_evidence(dp_model, privacy_budget, loaded.policy.privacy.lifetime_epsilon_budget),
        "erasure": dp_model.get("erasure"),  # versions an erasure request reached, and what was done (ppml/erasure.py)
        "model_evaluation": model_evaluation | {"report": None},
        "privacy_evaluation": privacy_evaluation,
        "audit": None if privacy_audit.get("skipped") else privacy_audit,
        "leakage": leakage_evidence(
            loaded, raw_window, feature_names, list(anonymized_records.columns), mlflow, dp_model["mlflow_run_id"]
        ),
        "mlflow": {
            "tracking_uri_redacted": _redact(mlflow.tracking_uri),
            "experiment_id": mlflow.client().get_run(dp_model["mlflow_run_id"]).info.experiment_id,
        },
        "data_quality_checks": data_quality_results(instance, context.run.run_id),
        "serving_monitoring": latest_serving_monitoring(instance, key("serving_monitoring")),
        **document_facts(instance, loaded, anonymized_records, asset_store, ledger.url, days),
    }
    verdicts = evaluate_requirements(loaded.policy, evidence)
    evidence["checks"] = [verdict.to_dict() for verdict in verdicts]
    failed = failing(verdicts)
    evidence["decision"] = _promotion_decision(context, loaded, mlflow, dp_model, failed)
    files = write_report(
        evidence,
        paths.reports_dir / as_of,
        forbidden_values=_identifier_values(raw_window, loaded),
        documents=bool(failed),  # a passing model's documents are written once, by compliance_report
    )
    if failed:  # compliance_report will not run: the refused version gets its signed pack here
        build_evidence_pack(
            context,
            loaded=loaded,
            asset_store=asset_store,
            mlflow=mlflow,
            sinks=GATE_INPUTS,
            report_files=files.all(),
            decision=evidence["decision"],
            mlflow_run_id=dp_model["mlflow_run_id"],
        )
    context.add_output_metadata(_gate_metadata(verdicts, failed, evidence, record_in_mlflow(mlflow, evidence, files)))
    return {"checks": evidence["checks"], "failing": failed, "evidence": evidence}


def _features_evidence(training_features: pd.DataFrame, feature_names: list[str]) -> dict[str, Any]:
    splits = training_features["split"]
    return {"count": len(feature_names), "rows": {s: int((splits == s).sum()) for s in ("train", "validation", "test")}}


def _training_evidence(dp_model: dict, privacy_budget: dict, lifetime_epsilon: float) -> dict[str, Any]:
    """The training's record (without its feature labels and candidates) and the ledger's account."""
    return {
        "training": {
            **{k: v for k, v in dp_model.items() if k not in ("feature_names", "candidates", "ledger", "erasure")},
            "baseline_run_id": None,
        },
        "ledger": dp_model["ledger"]
        | {
            "spent_all_runs": lifetime_epsilon - privacy_budget["remaining_epsilon"],
            "remaining_all_runs": privacy_budget["remaining_epsilon"],
        },
    }


def _gate_metadata(verdicts: list, failed: list, evidence: dict[str, Any], mlflow_links: dict) -> dict[str, Any]:
    return {
        "passed_checks": len(verdicts) - len(failed),
        "total_checks": len(verdicts),
        "failing_checks": MetadataValue.json(failed),
        "verdicts": MetadataValue.md(_verdict_table(evidence["checks"])),
        **mlflow_links,
    }


def _policy_evidence(loaded: LoadedPolicy) -> dict[str, Any]:
    """Which policy version judged the run, and the use case it declares (purpose, lawful basis, retention)."""
    use_case = loaded.policy.use_case
    return {
        "name": loaded.policy.name,
        "hash": loaded.content_hash,
        "path": str(loaded.path),
        "regulation": use_case.regulation.value,
        "lawful_basis": use_case.lawful_basis.value,
        "purpose": use_case.purpose,
        "data_subjects": use_case.data_subjects,
        "retention_days": use_case.retention_days,
    }


def _data_evidence(
    instance: Any,
    asset_store: AssetStore,
    as_of: str,
    window: dict[str, Any],
    anonymization_report: dict[str, Any],
    loaded: LoadedPolicy,
) -> dict[str, Any]:
    """Row counts through the window (collected, erased, de-identified), identifier actions and content hashes."""
    key = asset_store.asset_key
    return {
        "rows_collected": window["collected"],
        "rows_excluded_by_erasure": window["excluded"],
        "rows_deidentified": anonymization_report["records_in"],
        "identifier_actions": {k: v.value for k, v in loaded.policy.schema_.direct_identifiers.items()},
        "hashes": {
            "anonymized_records": latest_metadata(instance, key("anonymized_records"), as_of).get("content_sha256", ""),
            "training_features": latest_metadata(instance, key("training_features"), as_of).get("content_sha256", ""),
        },
    }


def _promotion_decision(
    context: AssetExecutionContext, loaded: LoadedPolicy, mlflow: MlflowResource, dp_model: dict, failed: list
) -> dict[str, Any]:
    """Pending when every check passed (the gate promotes); refused, with the registry told why, otherwise."""
    decision = {
        "model_name": dp_model["model_name"],
        "version": dp_model["model_version"],
        "promoted": False,
        "status": "pending" if not failed else "refused",
        "failing_checks": failed,
    }
    if failed:
        promotion = decide_promotion(
            mlflow.client(),
            dp_model["model_name"],
            dp_model["model_version"],
            dp_model["mlflow_run_id"],
            failed,
            {"ppml.policy_sha256": loaded.content_hash, "dagster.run_id": context.run.run_id},
        )
        decision |= promotion.to_dict()
    return decision


def _identifier_window(
    asset_store: AssetStore, paths: WorkspacePaths, pseudonym_key: PseudonymizationKey, days: list[str]
) -> pd.DataFrame:
    """The window's raw identifier values: the encrypted reference de-identification kept when it disposed of
    the raw copy (`ppml.raw_copies`), else the raw copy itself (a partition collected before raw copies went)."""
    from ppml.locations import resolve_location
    from ppml.raw_copies import RawCopies

    folder = resolve_location(asset_store.base_dir).joinpath(*asset_store.asset_key("raw_records").path[:-1])
    copies = RawCopies(folder, Path(paths.home), pseudonym_key.key())
    frames = []
    for day in days:
        reference = copies.read_identifier_reference(day)
        frames.append(reference if reference is not None else asset_store.read_stored("raw_records", day))
    return pd.concat(frames, ignore_index=True)


def _identifier_values(raw_window: pd.DataFrame, loaded: LoadedPolicy) -> set[str]:
    """Raw values the report must never contain: identifiers that are dropped, pseudonymized or masked
    (generalized ones — ZIP3, years — legitimately appear, e.g. the window's dates)."""
    generalized = {IdentifierAction.ZIP3, IdentifierAction.YEAR}
    columns = [
        c
        for c, action in loaded.policy.schema_.direct_identifiers.items()
        if c in raw_window.columns and action not in generalized
    ]
    return {str(v) for c in columns for v in raw_window[c].unique() if len(str(v)) >= 6}


def _redact(uri: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri.split("@")[-1]


def _verdict_table(checks: list[dict]) -> str:
    lines = ["| check | measured | limit | verdict |", "|---|---|---|---|"]
    for c in checks:
        measured = f"{c['measured']:.4g}" if isinstance(c["measured"], float) else c["measured"]
        lines.append(f"| {c['name']} | {measured} | {c['limit']} | {'pass' if c['passed'] else 'FAIL'} |")
    return "\n".join(lines)


#: The op that computes every requirement's gate check (its step key, for the demo's failure summary).
GATE_OP = "compliance_requirement_gates"


@policy_multi_asset_check(asset="compliance_status", checks=REQUIREMENTS, blocking=True)
def compliance_requirement_gates(
    context: AssetCheckExecutionContext, compliance_status: dict
) -> Iterator[AssetCheckResult]:
    """One blocking check per requirement the policy sets; a requirement it does not set (no limit) yields no
    result, so Dagster shows that check as skipped rather than passed."""
    selected = {key.name for key in context.selected_asset_check_keys}
    for verdict in compliance_status["checks"]:
        if verdict["name"] not in selected or verdict["detail"] == NOT_REQUIRED:
            continue
        yield AssetCheckResult(
            check_name=verdict["name"],
            passed=bool(verdict["passed"]),
            description=(
                f"{verdict['requirement']}: measured {verdict['measured']}, limit {verdict['limit']}. "
                f"{verdict['detail']}"
            ),
            metadata={
                "measured": MetadataValue.text(str(verdict["measured"])),
                "limit": MetadataValue.text(str(verdict["limit"])),
                "evidence": MetadataValue.json(verdict["evidence"] or {}),
            },
        )
