"""Step 2a: daily collection from the configured record source, guarded by a blocking GX suite."""

import time
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    BackfillPolicy,
    MetadataValue,
)

from ppml.collection import collect_partition, read_erasure_list
from ppml.expectations import raw_records_suite
from ppml_assets.data_quality import data_quality_page_metadata
from ppml_assets.graph import policy_asset, policy_asset_check
from ppml_assets.requirements import require_current_policy
from resources import PolicyResource, RecordSource, WorkspacePaths


@policy_asset(
    group_name="collection",
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"pandas", "parquet"},
)
def raw_records(
    context: AssetExecutionContext,
    privacy_requirements: dict,
    policy: PolicyResource,
    record_source: RecordSource,
) -> Any:
    """Raw records of each event date, validated, with erasure/objection requests honoured.

    A backfill of many days runs as one run (single-run backfill policy) and returns one frame per day.
    """
    started = time.perf_counter()
    loaded = require_current_policy(privacy_requirements, policy)
    erased = (
        read_erasure_list(loaded.resolve(loaded.policy.collection.erasure_list))
        if (loaded.policy.collection.erasure_list)
        else set()
    )
    reader = record_source.reader()
    per_day: dict[str, pd.DataFrame] = {}
    rows_read = excluded = dropped = 0
    hashes = {}
    counts = {}
    for day in context.partition_keys:
        collected = collect_partition(reader, day, loaded.policy, erased)
        per_day[day] = collected.records
        rows_read += collected.rows_read
        excluded += collected.rows_excluded_by_erasure
        dropped += collected.rows_dropped_as_duplicates
        hashes[day] = collected.content_sha256
        counts[day] = {
            "collected": collected.rows_read,
            "excluded_by_erasure": collected.rows_excluded_by_erasure,
            "dropped_as_duplicates": collected.rows_dropped_as_duplicates,
        }
    context.add_output_metadata(
        {
            "source": record_source.describe(),
            "partitions": len(per_day),
            "rows_read": rows_read,
            "rows_excluded_by_erasure": excluded,
            "rows_dropped_as_duplicates": dropped,
            # per day, so that a window's totals can be summed from any mix of single-day and range runs
            "rows_per_partition": MetadataValue.json(counts),
            "content_sha256": MetadataValue.json(hashes) if len(hashes) > 1 else next(iter(hashes.values())),
            "policy_hash": loaded.content_hash,
            "seconds": round(time.perf_counter() - started, 3),
        }
    )
    return per_day if len(per_day) > 1 else next(iter(per_day.values()))


@policy_asset_check(asset="raw_records", blocking=True)
def raw_records_expectations(
    context: AssetCheckExecutionContext, raw_records: pd.DataFrame, policy: PolicyResource, paths: WorkspacePaths
) -> AssetCheckResult:
    """GX suite: schema, types, not-null and plausible ranges of the collected records."""
    outcome = raw_records_suite(policy.load().policy, raw_records)
    return AssetCheckResult(
        passed=outcome.success,
        description=outcome.summary(),
        metadata={
            "expectations": MetadataValue.json(outcome.results),
            "failed": len(outcome.failures),
            **data_quality_page_metadata(context, outcome, "raw_records", paths),
        },
    )
