"""Step 7a: promotion to production. Downstream of every blocking gate check, so it runs only when all passed."""

from dagster import AssetExecutionContext

from ppml.deployment import decide_promotion
from ppml_assets.graph import policy_asset
from ppml_assets.metadata import mlflow_model_version_url
from resources import MlflowResource, PolicyResource


@policy_asset(group_name="deployment", kinds={"mlflow"})
def registered_model(
    context: AssetExecutionContext,
    compliance_status: dict,
    dp_model: dict,
    policy: PolicyResource,
    mlflow: MlflowResource,
) -> dict:
    """Move the MLflow alias ``production`` to this run's model version and record the decision in the
    registry and the training run. Dagster only executes this after every blocking check passed."""
    if compliance_status["failing"]:  # defence in depth: the blocking checks already stop the run
        raise RuntimeError(f"refusing to promote: failing checks {compliance_status['failing']}")
    loaded = policy.load()
    decision = decide_promotion(
        mlflow.client(),
        dp_model["model_name"],
        dp_model["model_version"],
        dp_model["mlflow_run_id"],
        [],
        {"ppml.policy_sha256": loaded.content_hash, "dagster.run_id": context.run.run_id},
    )
    context.add_output_metadata(
        {
            "model_name": decision.model_name,
            "version": decision.version,
            "decision": "promoted to production",
            "previous_production_version": decision.previous_production_version or "none",
            "mlflow_model_version": mlflow_model_version_url(decision.model_name, decision.version),
        }
    )
    return decision.to_dict()
