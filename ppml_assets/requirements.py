"""Step 1: the validated, versioned policy as an asset every other stage depends on."""

from dagster import AssetExecutionContext, MetadataValue

from ppml.federated.settings import refuse_federated_policy
from ppml_assets.graph import policy_asset
from resources import PolicyResource


@policy_asset(group_name="requirements", partitioned=False, kinds={"yaml"})
def privacy_requirements(context: AssetExecutionContext, policy: PolicyResource) -> dict:
    """The policy file, validated; its content hash versions every artefact downstream."""
    loaded = policy.load()
    refuse_federated_policy(loaded.path, loaded.policy.training.mode, "the central lifecycle")
    document = loaded.policy.model_dump(mode="json", by_alias=True)
    privacy = loaded.policy.privacy
    context.add_output_metadata(
        {
            "policy_hash": loaded.content_hash,
            "policy_path": MetadataValue.path(str(loaded.path)),
            "regulation": loaded.policy.use_case.regulation.value,
            "purpose": loaded.policy.use_case.purpose,
            "k": privacy.k,
            "epsilon": privacy.epsilon,
            "delta": privacy.delta,
            "lifetime_epsilon_budget": privacy.lifetime_epsilon_budget,
        }
    )
    return {"policy_hash": loaded.content_hash, "policy_path": str(loaded.path), "policy": document}


def require_current_policy(requirements: dict, policy: PolicyResource):  # type: ignore[no-untyped-def]
    """Load the policy and refuse to run when it changed since privacy_requirements was materialized."""
    from ppml.errors import PPMLError

    loaded = policy.load()
    if loaded.content_hash != requirements["policy_hash"]:
        raise PPMLError(
            f"{loaded.path}: field '(content)': the policy changed since privacy_requirements was materialized "
            "(hash differs); fix: re-materialize privacy_requirements so the new policy is validated and versioned"
        )
    return loaded
