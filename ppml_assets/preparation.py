"""Step 3: cleaning with risk-limiting feature selection, GX-guarded, then the encoded training features."""

import time

import pandas as pd
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetExecutionContext, MetadataValue

from ppml.collection import frame_sha256
from ppml.expectations import cleaned_records_suite
from ppml.preparation import LABEL_COLUMN, SPLIT_COLUMN, SPLITS, SplitRatios, clean_records, encode_features
from ppml_assets.data_quality import data_quality_page_metadata
from ppml_assets.graph import policy_asset, policy_asset_check
from resources import PolicyResource, WorkspacePaths


@policy_asset(group_name="preparation", kinds={"pandas", "parquet"})
def cleaned_records(
    context: AssetExecutionContext, anonymized_records: pd.DataFrame, policy: PolicyResource
) -> pd.DataFrame:
    """Labels normalised, missing categories made explicit, features admitted only while re-identification
    risk stays bounded, and a train/validation/test split stable per data subject."""
    started = time.perf_counter()
    settings = policy.load().policy
    preparation = settings.preparation
    cleaned, report = clean_records(
        anonymized_records,
        settings,
        max_share_below_k=preparation.max_share_below_k,
        bin_candidates=tuple(preparation.numeric_bins),
        ratios=SplitRatios(preparation.train_percent, preparation.validation_percent),
    )
    context.add_output_metadata(
        {
            "selected_features": MetadataValue.json(report.selected),
            "feature_decisions": MetadataValue.json(report.to_dict()["decisions"]),
            "share_below_k": round(report.share_below_k, 6),
            "rows_dropped_missing_label": report.rows_dropped_missing_label,
            "content_sha256": frame_sha256(cleaned),
            "preparation_report": MetadataValue.json(report.to_dict()),
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return cleaned


@policy_asset_check(asset="cleaned_records", blocking=True)
def cleaned_records_expectations(
    context: AssetCheckExecutionContext, cleaned_records: pd.DataFrame, policy: PolicyResource, paths: WorkspacePaths
) -> AssetCheckResult:
    """GX suite: exactly the selected features plus label and split, no nulls, a known class, known splits."""
    roles = policy.load().policy.schema_
    allowed = [c for c in [*roles.quasi_identifiers, *roles.features] if c in cleaned_records.columns]
    outcome = cleaned_records_suite(
        cleaned_records,
        [*dict.fromkeys(allowed), LABEL_COLUMN, SPLIT_COLUMN],
        LABEL_COLUMN,
        SPLIT_COLUMN,
        len(roles.label_classes()),
    )
    return AssetCheckResult(
        passed=outcome.success,
        description=outcome.summary(),
        metadata={
            "expectations": MetadataValue.json(outcome.results),
            "failed": len(outcome.failures),
            **data_quality_page_metadata(context, outcome, "cleaned_records", paths),
        },
    )


@policy_asset(group_name="preparation", kinds={"pandas", "parquet"})
def training_features(context: AssetExecutionContext, cleaned_records: pd.DataFrame) -> pd.DataFrame:
    """One-hot encoded features (readable names such as ``age=20-39``), label and split."""
    categorical = [c for c in cleaned_records.columns if c not in (LABEL_COLUMN, SPLIT_COLUMN)]
    matrix = encode_features(cleaned_records, categorical)
    rows = matrix.features[SPLIT_COLUMN].value_counts()
    context.add_output_metadata(
        {
            "feature_count": len(matrix.feature_names),
            "feature_names": MetadataValue.json(matrix.feature_names),
            "rows": MetadataValue.json({split: int(rows.get(split, 0)) for split in SPLITS}),
            "positive_rate": round(float(matrix.features[LABEL_COLUMN].mean()), 4),
            "content_sha256": frame_sha256(matrix.features),
        }
    )
    return matrix.features
