"""Thin Dagster layer over :mod:`ppml.tracking_evidence`: record a judged run in MLflow and return the links
(MLflow run, audit run, model version, the report in MLflow) as URL metadata for the asset."""

from typing import Any

from dagster import MetadataValue

from ppml.tracking_evidence import attach_report, record_evidence
from ppml_assets.metadata import mlflow_artifact_url, mlflow_model_version_url, mlflow_run_url
from resources import MlflowResource


def report_links(run_id: str, files: Any, artifact_path: str = "compliance") -> dict[str, MetadataValue]:
    """The report and evidence.json: the local files and their copies in the MLflow run."""
    return {
        "report": MetadataValue.path(str(files.html)),
        "evidence": MetadataValue.path(str(files.evidence)),
        "report_in_mlflow": mlflow_artifact_url(run_id, f"{artifact_path}/{files.html.name}"),
        "evidence_in_mlflow": mlflow_artifact_url(run_id, f"{artifact_path}/{files.evidence.name}"),
    }


def record_in_mlflow(mlflow: MlflowResource, evidence: dict[str, Any], files: Any) -> dict[str, MetadataValue]:
    """Test, attack and audit metrics, the report and evidence on the training run; the model version's
    description; links to all of it."""
    record = record_evidence(mlflow.client(), evidence, files.html, files.evidence)
    links = {
        "mlflow_run": mlflow_run_url(record.training_run_id),
        "mlflow_model_version": mlflow_model_version_url(record.model_name, record.model_version),
        **report_links(record.training_run_id, files, record.artifact_path),
    }
    if record.audit_run_id:
        links["mlflow_audit_run"] = mlflow_run_url(record.audit_run_id)
    return links


def reattach_report(mlflow: MlflowResource, run_id: str, files: Any) -> dict[str, MetadataValue]:
    """The final report (with the promotion decision) replaces the gate's copy in the MLflow run."""
    attach_report(mlflow.client(), run_id, files.html, files.evidence)
    return report_links(run_id, files)
