"""The facts the regulatory documents need beyond the gate's evidence, gathered by compliance_status: what the
policy states and no measurement can (controller, DPO, recipients, transfers, the Art. 9 condition), the
de-identification counts of the window, the identifier-pattern scan of the release and the ledger's history."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ppml.documents.measurements import identifier_pattern_scan, ledger_history
from ppml.policy import LoadedPolicy
from ppml.special_categories import ARTICLE_9_2_POINT
from ppml_assets.common import latest_metadata, open_ledger
from resources import AssetStore


def accountability(loaded: LoadedPolicy) -> dict[str, Any]:
    use_case, roles = loaded.policy.use_case, loaded.policy.schema_
    basis = use_case.special_category_basis
    return {
        "controller": use_case.controller,
        "dpo": use_case.dpo,
        "recipients": list(use_case.recipients),
        "transfers": list(use_case.transfers),
        "special_category_columns": loaded.policy.special_category_columns(),
        "special_category_basis": basis.value if basis else None,
        "special_category_article": f"Art. 9(2)({ARTICLE_9_2_POINT[basis]})" if basis else None,
        "quasi_identifiers": list(roles.quasi_identifiers),
        "sensitive_attributes": list(roles.sensitive_attributes),
        "protected_attributes": list(roles.protected_attributes),
        "candidate_features": list(roles.features),
        "label": roles.label.column,
        "hierarchy_files": {c: str(p.name) for c, p in loaded.hierarchy_paths().items()},
        "monitoring": {
            "drift_psi_threshold": loaded.policy.monitoring.drift_psi_threshold,
            "retrain_cron": loaded.policy.monitoring.retrain_cron,
        },
    }


def deidentification_counts(instance: Any, asset_store: AssetStore, days: list[str]) -> dict[str, Any]:
    """Ages top-coded and ZIP3 prefixes set to 000 over the window (summed once per collection run: a backfill
    writes one metadata entry for all its days), and the columns de-identification released."""
    runs: dict[str, dict[str, Any]] = {}
    key = asset_store.asset_key("deidentified_records")
    for day in days:
        records = instance.fetch_materializations(_filter(key, day), limit=1).records
        if records:
            metadata = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
            runs[records[0].run_id] = metadata
    last = latest_metadata(instance, key, days[-1])
    return {
        "collection_runs": len(runs),
        "ages_top_coded": sum(int(m.get("ages_top_coded", 0)) for m in runs.values()),
        "zip3_restricted_to_000": sum(int(m.get("zip3_restricted_to_000", 0)) for m in runs.values()),
        "columns_out": list(last.get("columns") or []),
    }


def data_sources(instance: Any, asset_store: AssetStore, days: list[str]) -> list[str]:
    """Where the window's records were read from, as collection recorded it (passwords redacted there)."""
    key = asset_store.asset_key("raw_records")
    sources = {str(latest_metadata(instance, key, day).get("source", "")) for day in days}
    return sorted(source for source in sources if source)


def _filter(key: Any, day: str) -> Any:
    from dagster import AssetRecordsFilter

    return AssetRecordsFilter(asset_key=key, asset_partitions=[day])


def ledger_runs(ledger_url: str, loaded: LoadedPolicy) -> list[dict[str, Any]]:
    store = open_ledger(ledger_url, loaded)
    try:
        return ledger_history(store.runs(loaded.policy.dataset.id))
    finally:
        store.close()


def document_facts(
    instance: Any,
    loaded: LoadedPolicy,
    anonymized: pd.DataFrame,
    asset_store: AssetStore,
    ledger_url: str,
    days: list[str],
) -> dict[str, Any]:
    """The evidence sections only the documents read (merged into evidence.json)."""
    return {
        "accountability": accountability(loaded),
        "deidentification": deidentification_counts(instance, asset_store, days)
        | {"data_sources": data_sources(instance, asset_store, days)},
        "release_identifier_scan": identifier_pattern_scan(anonymized),
        "ledger_history": ledger_runs(ledger_url, loaded),
    }
