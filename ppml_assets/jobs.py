"""Asset jobs: collection per day, the training lifecycle per as-of day, and re-evaluation after drift."""

from dagster import AssetSelection, define_asset_job

from ppml_assets.settings import daily_partitions

COLLECTION_ASSETS = ["raw_records", "deidentified_records"]
TRAINING_ASSETS = [
    "anonymized_records",
    "dp_statistics",
    "cleaned_records",
    "training_features",
    "drift_reference",
    "dp_model",
    "non_private_baseline",
    "privacy_budget",
    "model_evaluation",
    "privacy_evaluation",
    "privacy_audit",
    "compliance_status",
    "registered_model",
    "compliance_report",
]
REEVALUATION_ASSETS = [
    "model_evaluation",
    "privacy_evaluation",
    "compliance_status",
    "registered_model",
    "compliance_report",
]

requirements_job = define_asset_job(
    "requirements_job", selection=AssetSelection.assets("privacy_requirements"), description="Validate the policy."
)
collection_job = define_asset_job(
    "collection_job",
    selection=AssetSelection.assets(*COLLECTION_ASSETS),
    partitions_def=daily_partitions,
    description="Collect and de-identify one day (or a range of days in one run).",
)
training_job = define_asset_job(
    "training_job",
    selection=AssetSelection.assets(*TRAINING_ASSETS),
    partitions_def=daily_partitions,
    description="The lifecycle from anonymization to the compliance report, as of one day.",
)
reevaluation_job = define_asset_job(
    "reevaluation_job",
    selection=AssetSelection.assets(*REEVALUATION_ASSETS),
    partitions_def=daily_partitions,
    description="Re-run evaluation and the compliance gate for an as-of day (requested by the drift sensor).",
)
