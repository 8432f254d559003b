"""Step 8: the compliance report (HTML), evidence.json and the signed evidence pack, with the final decision."""

from dagster import AssetExecutionContext, MetadataValue

from ppml.reporting import write_report
from ppml_assets.evidence import build_evidence_pack
from ppml_assets.graph import policy_asset
from ppml_assets.mlflow_evidence import reattach_report
from resources import AssetStore, MlflowResource, PolicyResource, WorkspacePaths


@policy_asset(group_name="reporting", kinds={"html", "json"})
def compliance_report(
    context: AssetExecutionContext,
    compliance_status: dict,
    registered_model: dict,
    paths: WorkspacePaths,
    policy: PolicyResource,
    asset_store: AssetStore,
    mlflow: MlflowResource,
) -> dict:
    """``.ppml/reports/<as-of>/report.html``, ``evidence.json`` and the evidence pack: every requirement, its
    measured value and verdict, the lineage and the decision, signed over the hash DAG of every materialization
    the model version came from, for an auditor to verify and sign. (When the gate fails, compliance_status
    writes the report and pack with the refusal, since this asset does not run.)"""
    evidence = compliance_status["evidence"] | {"decision": {**registered_model, "status": "promoted"}}
    files = write_report(evidence, paths.reports_dir / context.partition_key)
    pack = build_evidence_pack(
        context,
        loaded=policy.load(),
        asset_store=asset_store,
        mlflow=mlflow,
        sinks=["compliance_status", "registered_model"],
        report_files=files.all(),
        decision=evidence["decision"],
        mlflow_run_id=evidence["training"]["mlflow_run_id"],
    )
    context.add_output_metadata(
        {
            **reattach_report(mlflow, evidence["training"]["mlflow_run_id"], files),
            "evidence_pack": MetadataValue.path(str(pack.directory)),
            "evidence_root_sha256": pack.root_sha256,
        }
    )
    return {
        "html": str(files.html),
        "evidence": str(files.evidence),
        "evidence_pack": str(pack.manifest),
        "evidence_root_sha256": pack.root_sha256,
        "decision": evidence["decision"],
    }
