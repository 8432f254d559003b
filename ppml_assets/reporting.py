"""Step 8: the compliance report (HTML) and evidence.json, with the final promotion decision."""

from dagster import AssetExecutionContext

from ppml.reporting import write_report
from ppml_assets.graph import policy_asset
from ppml_assets.mlflow_evidence import reattach_report
from resources import MlflowResource, WorkspacePaths


@policy_asset(group_name="reporting", kinds={"html", "json"})
def compliance_report(
    context: AssetExecutionContext,
    compliance_status: dict,
    registered_model: dict,
    paths: WorkspacePaths,
    mlflow: MlflowResource,
) -> dict:
    """``.ppml/reports/<as-of>/report.html`` and ``evidence.json``: every requirement, its measured value and
    verdict, the lineage and the decision, for an auditor to sign. (When the gate fails, compliance_status
    writes the report with the refusal, since this asset does not run.)"""
    evidence = compliance_status["evidence"] | {"decision": {**registered_model, "status": "promoted"}}
    files = write_report(evidence, paths.reports_dir / context.partition_key)
    context.add_output_metadata(reattach_report(mlflow, evidence["training"]["mlflow_run_id"], files))
    return {"html": str(files.html), "evidence": str(files.evidence), "decision": evidence["decision"]}
