"""Step 2b: de-identification — the boundary raw direct identifiers never cross."""

import time
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetObservation,
    BackfillPolicy,
    MetadataValue,
)

from ppml.collection import frame_sha256
from ppml.deidentification import deidentify, identifier_reference_columns, raw_identifier_leaks
from ppml.erasure import index_root, record_day_tokens
from ppml.locations import resolve_location
from ppml.raw_copies import RawCopies
from ppml_assets.graph import policy_asset, policy_asset_check
from resources import AssetStore, PolicyResource, PseudonymizationKey, WorkspacePaths


@policy_asset(
    group_name="collection",
    backfill_policy=BackfillPolicy.single_run(),
    kinds={"pandas", "parquet"},
)
def deidentified_records(
    context: AssetExecutionContext,
    raw_records: pd.DataFrame,
    policy: PolicyResource,
    pseudonym_key: PseudonymizationKey,
    asset_store: AssetStore,
) -> Any:
    """Direct identifiers dropped, HMAC-pseudonymized or generalized (HIPAA Safe Harbor) as the policy says."""
    started = time.perf_counter()
    keys = context.partition_keys
    loaded = policy.load()
    key = pseudonym_key.key()
    event_date = loaded.policy.schema_.event_date
    out, report = deidentify(raw_records, loaded.policy, key, source="raw_records")
    # erasure tokens beside each day, row-aligned (ppml/erasure.py): erasure requests reach later runs without raw ids
    record_day_tokens(index_root(asset_store.base_dir, loaded.policy), raw_records, out, keys, loaded.policy, key)
    metadata = {
        "columns": MetadataValue.json(list(out.columns)),
        "identifier_actions": MetadataValue.json(report.actions),
        "content_sha256": frame_sha256(out),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if report.safe_harbor_checklist:
        metadata["safe_harbor_checklist"] = MetadataValue.md(_checklist_markdown(report.safe_harbor_checklist))
        metadata["ages_top_coded"] = report.ages_top_coded
        metadata["zip3_restricted_to_000"] = report.zip3_restricted
    context.add_output_metadata(metadata)
    if len(keys) == 1:
        return out
    # Rows keep their order, so the raw event date (read before de-identification) splits them per day.
    days = raw_records[event_date].to_numpy()
    return {day: out[days == day].reset_index(drop=True) for day in keys}


def _checklist_markdown(rows: list[dict[str, str]]) -> str:
    lines = ["| | HIPAA Safe Harbor identifier | treatment | verdict |", "|---|---|---|---|"]
    lines += [f"| {r['category']} | {r['identifier']} | {r['treatment']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines)


@policy_asset_check(asset="deidentified_records", blocking=True)
def no_raw_direct_identifiers(
    context: AssetCheckExecutionContext,
    deidentified_records: pd.DataFrame,
    raw_records: pd.DataFrame,
    policy: PolicyResource,
    asset_store: AssetStore,
    pseudonym_key: PseudonymizationKey,
    paths: WorkspacePaths,
) -> AssetCheckResult:
    """No raw value of a direct identifier appears anywhere in the de-identified records.

    Passed, the partitions' raw copies are no longer needed: deleted (or encrypted) as the policy says, and
    what was disposed of recorded here, on `raw_records` (an observation per partition) and in the audit file.
    """
    loaded = policy.load()
    leaks = raw_identifier_leaks(raw_records, deidentified_records, loaded.policy)
    metadata: dict[str, Any] = {"leaking_identifier_columns": MetadataValue.json(leaks)}
    if not leaks:
        metadata |= _dispose_raw_copies(context, raw_records, loaded.policy, asset_store, pseudonym_key, paths)
    return AssetCheckResult(
        passed=not leaks,
        description="no raw direct identifier value in the output" if not leaks else f"leaked columns: {leaks}",
        metadata=metadata,
    )


def _dispose_raw_copies(
    context: AssetCheckExecutionContext,
    raw_records: pd.DataFrame,
    policy: Any,
    asset_store: AssetStore,
    pseudonym_key: PseudonymizationKey,
    paths: WorkspacePaths,
) -> dict[str, Any]:
    """The raw copies of the checked partitions deleted or encrypted, expired ones purged; metadata for the check."""
    raw_key = asset_store.asset_key("raw_records")  # this policy graph's (prefixed) key and folder
    folder = resolve_location(asset_store.base_dir).joinpath(*raw_key.path[:-1])
    copies = RawCopies(folder, Path(paths.home), pseudonym_key.key())
    keys = context.partition_keys if context.has_partition_key_range or context.has_partition_key else []
    columns = identifier_reference_columns(policy)
    done = copies.dispose(raw_records, keys, policy.schema_.event_date, columns, policy.collection.raw_copy)
    purged = copies.purge_expired(policy.use_case.retention_days)
    for record in done.records:
        context.op_execution_context.log_event(
            AssetObservation(
                asset_key=raw_key,
                partition=record["partition"],
                metadata={"raw_copy": record["action"], "raw_copy_sha256": record["sha256"], "at": record["at"]},
            )
        )
    done.purged = len(purged)
    return {**done.metadata(), "raw_copy_audit": MetadataValue.path(str(copies.audit_path))}
