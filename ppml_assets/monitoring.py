"""Step 7b: the training window's reference profile that the drift sensor compares new partitions with."""

import pandas as pd
from dagster import AssetExecutionContext, MetadataValue

from ppml.monitoring import build_profile
from ppml_assets.graph import policy_asset
from resources import PolicyResource


@policy_asset(group_name="monitoring", window_inputs=["deidentified_records"], kinds={"pandas", "json"})
def drift_reference(context: AssetExecutionContext, deidentified_records: pd.DataFrame, policy: PolicyResource) -> dict:
    """Per-feature category and decile counts of the training window (aggregates only, no records)."""
    roles = policy.load().policy.schema_
    numeric = [c for c in roles.features if c in roles.numeric_columns]
    categorical = [c for c in roles.features if c not in roles.numeric_columns]
    profile = build_profile(deidentified_records, categorical, numeric)
    context.add_output_metadata({"rows": profile["rows"], "features": MetadataValue.json(sorted(profile["features"]))})
    return profile
