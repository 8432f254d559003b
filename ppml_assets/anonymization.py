"""Step 2c: anonymization of the training window with the ARX-compatible engine, and the OpenDP summary."""

from dataclasses import replace

import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    MetadataValue,
)

from ppml.anonymization.policy_config import config_from_policy, rules_from_policy, with_missing_values
from ppml.anonymization.release_safety import safe_release
from ppml.anonymization.verify import class_statistics, verify_release
from ppml.collection import frame_sha256
from ppml.dp_statistics import release_dp_summary
from ppml.erasure import exclude_erased, index_root, kept_rows
from ppml.errors import input_error
from ppml.expectations import anonymized_records_suite
from ppml.ledger import LifetimeBudget
from ppml.policy import IdentifierAction, LoadedPolicy
from ppml.serving.spec import generalization_spec
from ppml_assets.common import data_scope, latest_metadata, open_ledger
from ppml_assets.data_quality import data_quality_page_metadata
from ppml_assets.graph import policy_asset, policy_asset_check
from ppml_assets.settings import window_partition_keys
from ppml_assets.subjects import bounded_window, is_subject_unit, write_release_subjects
from resources import AssetStore, LedgerResource, PolicyResource, PseudonymizationKey, WorkspacePaths

#: how many recent releases are looked through for the previous as-of day's (a backfill may have written later ones)
PREVIOUS_RELEASES_READ = 50


def released_columns(loaded: LoadedPolicy, deidentified_columns: list[str]) -> list[str]:
    """What the release may contain: de-identified columns minus any direct identifier that is not generalized.

    The event date is dropped too: the release is the window as a whole, and dates tie records to people.
    """
    roles = loaded.policy.schema_
    kept_identifiers = {
        column
        for column, action in roles.direct_identifiers.items()
        if action in {IdentifierAction.ZIP3, IdentifierAction.YEAR} and column in roles.quasi_identifiers
    }
    dropped = (set(roles.direct_identifiers) - kept_identifiers) | {roles.event_date}
    return [column for column in deidentified_columns if column not in dropped]


@policy_asset(group_name="anonymization", window_inputs=["deidentified_records"], kinds={"pandas", "parquet"})
def anonymized_records(
    context: AssetExecutionContext,
    deidentified_records: pd.DataFrame,
    policy: PolicyResource,
    pseudonym_key: PseudonymizationKey,
    asset_store: AssetStore,
) -> pd.DataFrame:
    """The training window generalized over the policy's hierarchies until k, l and t hold (optimal search),
    with every other released column tested as a re-identification handle and treated as the policy's
    ``release`` section says (generalized or binned into the search, dropped, kept, or the release refused).

    When no transformation satisfies the models within the suppression limit, or a released column cannot be
    made safe, the engine raises and nothing is written: the asset never releases an empty or weaker dataset.
    With ``privacy_unit: subject`` the window is contribution-bounded first (so k holds over the bounded set) and
    the released rows' pseudonyms go to an owner-only side table for dp_model (ppml_assets.subjects).
    """
    loaded = policy.load()
    window = context.asset_partition_keys_for_input("deidentified_records")
    if list(window) != window_partition_keys(context.partition_key, loaded.policy.collection.training_window_days):
        raise input_error(  # the partition mapping is static: it holds the window of the policy as loaded
            str(loaded.path),
            "collection.training_window_days",
            f"changed since the code location loaded (it maps {len(window)} days)",
            "reload the code location (dagster dev / the code server) so the graph reads the new window",
        )
    # subjects who asked for erasure after their days were collected are left out here (ppml/erasure.py)
    erasure_root = index_root(asset_store.base_dir, loaded.policy)
    source = f"anonymized_records[{context.partition_key}]"
    erasure = exclude_erased(deidentified_records, window, loaded, pseudonym_key.key(), erasure_root, source)
    deidentified_records, contribution = bounded_window(loaded, erasure.records, source)
    columns = released_columns(loaded, list(deidentified_records.columns))
    config = config_from_policy(loaded, source=f"anonymized_records[{context.partition_key}]")
    config = with_missing_values(config, deidentified_records, loaded.policy.schema_.missing_value_marker)
    config = replace(
        config,
        previous_transformation=previous_transformation(context.instance, context.asset_key, context.partition_key),
        previous_tolerance=loaded.policy.privacy.keep_previous_generalization_within,
    )
    safety = safe_release(deidentified_records[columns], config, rules_from_policy(loaded))
    result = safety.anonymization
    report = {**result.to_report(), "release_safety": safety.to_dict()}
    if is_subject_unit(loaded):
        write_release_subjects(asset_store, context.partition_key, loaded, deidentified_records, result.kept_rows)
        context.add_output_metadata({"contribution_bounding": MetadataValue.json(contribution)})
    context.add_output_metadata(
        {
            "window_first_partition": window[0],
            "window_last_partition": window[-1],
            "window_partitions": len(window),
            "records_in": result.records_in,
            "suppressed_records": result.suppressed_records,
            "transformation": MetadataValue.json(result.transformation),
            "quality": MetadataValue.json(report["quality"]),
            "equivalence_classes": result.equivalence_classes,
            "min_class_size": result.min_class_size,
            "search": report["search"],
            "transformations_checked": result.transformations_checked,
            "risk_before": MetadataValue.json(report["risk_before"]),
            "risk_after": MetadataValue.json(report["risk_after"]),
            "anonymization_report": MetadataValue.json(report),
            "kept_previous_transformation": bool((result.stability or {}).get("kept")),
            "release_safety": MetadataValue.json(report["release_safety"]),
            "attacker_knowledge": MetadataValue.json(safety.attacker_knowledge),
            # the hierarchy's labels at the released levels: public, so the DP summary need not read them from data
            "public_categories": MetadataValue.json(result.public_categories),
            # the released levels as a recipe for raw inputs: ppml serve replays it (hierarchy labels, no records)
            "serving_generalization": MetadataValue.json(
                generalization_spec(safety.config, result.transformation, safety.binned_columns)
            ),
            "content_sha256": frame_sha256(result.data),
            "seconds": round(result.seconds, 3),
            **erasure.metadata(),
        }
    )
    erasure.save(erasure_root, context.partition_key)
    return result.data


def previous_transformation(instance: DagsterInstance, key: AssetKey, partition: str) -> dict[str, int] | None:
    """The transformation of the latest release of an earlier as-of day (what a retrain keeps while valid)."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=key), limit=PREVIOUS_RELEASES_READ).records
    for record in records:  # newest first
        materialization = record.asset_materialization
        if materialization is None or not materialization.partition or materialization.partition >= partition:
            continue
        value = materialization.metadata.get("transformation")
        if value is not None and isinstance(value.value, dict):
            return {str(name): int(level) for name, level in value.value.items()}
    return None


def training_window_input(
    context: AssetCheckExecutionContext, asset_store: AssetStore, loaded: LoadedPolicy
) -> pd.DataFrame:
    """The de-identified window an as-of partition was anonymized from, read independently of the asset.

    (Asset-check inputs do not honour partition mappings, so the window is resolved explicitly here.) The
    subjects the asset left out on erasure requests are left out here too.
    """
    as_of = context.partition_key
    days = window_partition_keys(as_of, loaded.policy.collection.training_window_days)
    window = pd.concat([asset_store.read_stored("deidentified_records", day) for day in days], ignore_index=True)
    kept = kept_rows(window, days, index_root(asset_store.base_dir, loaded.policy), as_of)
    # the subject unit anonymizes the contribution-bounded window (the same bounding, reproducibly)
    return bounded_window(loaded, kept, f"anonymized_records[{as_of}]")[0]


@policy_asset_check(asset="anonymized_records", blocking=True)
def anonymized_records_expectations(
    context: AssetCheckExecutionContext,
    anonymized_records: pd.DataFrame,
    policy: PolicyResource,
    asset_store: AssetStore,
    paths: WorkspacePaths,
) -> AssetCheckResult:
    """GX suite: exactly the release schema (no direct identifier, minus the columns release safety dropped),
    every class >= k, distinct-l per class, and suppression within the limit."""
    loaded = policy.load()
    deidentified_records = training_window_input(context, asset_store, loaded)
    anonymized = asset_store.asset_key("anonymized_records")
    safety = latest_metadata(context.instance, anonymized, context.partition_key).get("release_safety")
    dropped = set((safety or {}).get("dropped", []))
    outcome = anonymized_records_suite(
        loaded.policy,
        anonymized_records,
        [c for c in released_columns(loaded, list(deidentified_records.columns)) if c not in dropped],
        input_rows=len(deidentified_records),
    )
    return AssetCheckResult(
        passed=outcome.success,
        description=outcome.summary(),
        metadata={
            "expectations": MetadataValue.json(outcome.results),
            "failed": len(outcome.failures),
            **data_quality_page_metadata(context, outcome, "anonymized_records", paths),
        },
    )


def release_handles(instance, partition_key: str, asset_store: AssetStore) -> list[str]:  # type: ignore[no-untyped-def]
    """The released columns the release-safety step kept as possible handles (quasi-identifiers of its search)."""
    anonymized = asset_store.asset_key("anonymized_records")
    safety = latest_metadata(instance, anonymized, partition_key).get("release_safety") or {}
    return list(safety.get("handles", []))


@policy_asset_check(asset="anonymized_records", blocking=True)
def privacy_models_hold(
    context: AssetCheckExecutionContext,
    anonymized_records: pd.DataFrame,
    policy: PolicyResource,
    asset_store: AssetStore,
) -> AssetCheckResult:
    """Independent re-verification of every model (k, each l-diversity variant, each t-closeness variant,
    suppression) on the stored release, against the de-identified window as the reference distribution."""
    loaded = policy.load()
    deidentified_records = training_window_input(context, asset_store, loaded)
    config = config_from_policy(loaded, source="anonymized_records")
    config = with_missing_values(config, deidentified_records, loaded.policy.schema_.missing_value_marker)
    handles = release_handles(context.instance, context.partition_key, asset_store)
    violations = verify_release(
        anonymized_records,
        config,
        original=deidentified_records,
        forbidden_columns=[c for c in loaded.policy.schema_.direct_identifiers if c not in config.quasi_identifiers],
        handles=handles,
    )
    statistics = class_statistics(anonymized_records, [*config.quasi_identifiers, *handles])
    return AssetCheckResult(
        passed=not violations,
        description="all privacy models hold" if not violations else "; ".join(v.detail for v in violations),
        metadata={
            "models": MetadataValue.json(config.describe_models()),
            "k_covers": MetadataValue.json([*config.quasi_identifiers, *handles]),
            # counts only: example classes stay out of the metadata
            "violations": MetadataValue.json(
                [
                    {"rule": v.rule, "attribute": v.attribute, "classes": v.classes, "records": v.records}
                    for v in violations
                ]
            ),
            "class_statistics": MetadataValue.json(statistics),
        },
    )


@policy_asset(group_name="anonymization", kinds={"opendp", "json"})
def dp_statistics(
    context: AssetExecutionContext,
    anonymized_records: pd.DataFrame,
    policy: PolicyResource,
    ledger: LedgerResource,
    asset_store: AssetStore,
) -> dict:
    """A differentially private summary of the release (OpenDP): counts per category and clamped means,
    spending the policy's own ``dp_statistics_epsilon`` -- charged to the lifetime ledger (pure epsilon-DP) before
    it reads a record, and refused when the lifetime budget would be exceeded."""
    loaded = policy.load()
    roles = loaded.policy.schema_
    anonymized = asset_store.asset_key("anonymized_records")
    public = latest_metadata(context.instance, anonymized, context.partition_key).get("public_categories", {})
    categorical = {
        column: public.get(column, loaded.policy.schema_.label_values if column == roles.label.column else None) or None
        for column in [*roles.quasi_identifiers, roles.label.column]
        if column in anonymized_records.columns
    }
    numeric = {
        column: (float(low), float(high))
        for column, (low, high) in roles.value_ranges.items()
        if column in anonymized_records.columns
        and column not in roles.quasi_identifiers
        # a column release safety generalized or binned holds labels, not numbers: no clamped mean of it
        and pd.api.types.is_numeric_dtype(anonymized_records[column])
    }
    privacy = loaded.policy.privacy
    scope = data_scope(loaded, context.partition_key)
    store = open_ledger(ledger.url, loaded)
    try:
        summary, ledger_run_id = release_dp_summary(
            anonymized_records,
            epsilon=privacy.dp_statistics_epsilon,
            ledger=store,
            scope=scope,
            # delta: auto resolves on every record here (<= the training split's delta: composition over-counts)
            lifetime=LifetimeBudget(privacy.lifetime_epsilon_budget, privacy.delta_for(len(anonymized_records))),
            request_key=f"dp_statistics:{context.partition_key}:{context.run.run_id}",
            dagster_run_id=context.run.run_id,
            categorical=categorical,
            numeric=numeric,
        )
    finally:
        store.close()
    released = summary.to_dict() | {"ledger_run_id": ledger_run_id, "ledger_dataset": scope.dataset}
    context.add_output_metadata(
        {
            "ledger_run_id": ledger_run_id,
            "epsilon_spent": summary.epsilon_spent,
            "epsilon_budget": summary.epsilon_budget,
            "queries": summary.queries,
            "noisy_total_count": summary.total_count,
            "summary": MetadataValue.json(released),
        }
    )
    return released
