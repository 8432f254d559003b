"""The privacy unit ``subject`` in the graph: contribution bounding before anonymization, the release's pseudonyms
kept inside the trusted boundary, and user-level DP training through the per-subject filter.

Thin glue over the engines (ppml.training.contribution, ppml.training.subject_budget, ppml.ledger.subjects): the
record unit never enters this module, so its behaviour is unchanged.

Why a private side table: k-anonymity must hold over the records that are actually released and trained on, so
bounding happens on the window's de-identified records *before* anonymization; the release itself never carries
the pseudonym (it would be a handle), and anonymization drops suppressed rows. ``anonymized_records`` therefore
writes, beside its release, the pseudonym of every released row in release order (``release_subjects``, an
owner-only Parquet file that no asset releases or reports); ``dp_model`` aligns it with ``training_features``
(the rows cleaning keeps are recomputed and checked against its row counts) to train per person.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from ppml.errors import PPMLError
from ppml.ledger import LifetimeBudget
from ppml.ledger.subjects import SubjectAccounts
from ppml.policy import LoadedPolicy
from ppml.preparation import SPLIT_COLUMN
from ppml.training.contribution import bound_contributions
from resources import AssetStore

#: the side table of the release's pseudonyms (never an asset input, never reported)
RELEASE_SUBJECTS = "release_subjects"
PSEUDONYM_COLUMN = "pseudonym"


def is_subject_unit(loaded: LoadedPolicy) -> bool:
    return loaded.policy.privacy.privacy_unit == "subject"


def bounded_window(loaded: LoadedPolicy, window: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict | None]:
    """The window as released: unchanged for ``record``; at most c records per subject for ``subject``."""
    if not is_subject_unit(loaded):
        return window, None
    privacy, roles = loaded.policy.privacy, loaded.policy.schema_
    kept, report = bound_contributions(
        window,
        roles.subject_id,
        privacy.max_records_per_subject,
        seed=privacy.contribution_seed,
        record_key_columns=[roles.event_date] if roles.event_date in window.columns else None,
        source=source,
    )
    return kept.reset_index(drop=True), report.to_dict()


def write_release_subjects(
    asset_store: AssetStore, partition: str, loaded: LoadedPolicy, window: pd.DataFrame, kept_rows: np.ndarray
) -> None:
    """The pseudonym of every released row, in release order (owner-only, inside the trusted boundary)."""
    pseudonyms = window[loaded.policy.schema_.subject_id].astype(str).to_numpy()
    if len(kept_rows) != len(pseudonyms):
        raise PPMLError(
            f"anonymized_records[{partition}]: field 'kept_rows': {len(kept_rows)} flags for {len(pseudonyms)} "
            "records; fix: report this engine bug"
        )
    asset_store.write_private(RELEASE_SUBJECTS, partition, pd.DataFrame({PSEUDONYM_COLUMN: pseudonyms[kept_rows]}))


def training_pseudonyms(
    asset_store: AssetStore, partition: str, loaded: LoadedPolicy, training_features: pd.DataFrame
) -> np.ndarray:
    """The pseudonym of each ``train`` row of ``training_features`` (same order as ``feature_splits``)."""
    released = asset_store.read_stored("anonymized_records", partition)
    subjects = asset_store.read_stored(RELEASE_SUBJECTS, partition)
    if len(subjects) != len(released):
        raise PPMLError(
            f"{RELEASE_SUBJECTS}[{partition}]: field '{PSEUDONYM_COLUMN}': {len(subjects)} pseudonyms for "
            f"{len(released)} released rows; fix: re-materialize anonymized_records for {partition}"
        )
    # the rows clean_records keeps: those with a label (ppml.preparation drops the rest, order kept)
    label = released[loaded.policy.schema_.label.column].astype(str).str.strip().str.rstrip(".")
    labelled = (label.ne("") & label.ne("?")).to_numpy()
    pseudonyms = subjects[PSEUDONYM_COLUMN].astype(str).to_numpy()[labelled]
    if len(pseudonyms) != len(training_features):
        raise PPMLError(
            f"training_features[{partition}]: field 'rows': {len(training_features)} rows but {len(pseudonyms)} "
            "labelled released rows; fix: re-materialize cleaned_records and training_features for this day"
        )
    return pseudonyms[(training_features[SPLIT_COLUMN] == "train").to_numpy()]


def lifetime_for_subjects(loaded: LoadedPolicy, subjects: int) -> LifetimeBudget:
    """The per-person lifetime budget: the policy's epsilon at the delta of a run on ``subjects`` people."""
    privacy = loaded.policy.privacy
    return LifetimeBudget(privacy.lifetime_epsilon_budget, privacy.delta_for(subjects))


def subject_budget_status(store: Any, loaded: LoadedPolicy, delta: float) -> dict[str, Any]:
    """What privacy_budget states for the subject unit: the per-person accounts (highest epsilon of anyone)."""
    privacy = loaded.policy.privacy
    lifetime = LifetimeBudget(privacy.lifetime_epsilon_budget, delta)
    summary = SubjectAccounts(store).summary(
        loaded.policy.dataset.id, lifetime, record_unit_group_size=privacy.max_records_per_subject
    )
    remaining = max(privacy.lifetime_epsilon_budget - float(summary["max_subject_epsilon"]), 0.0)
    return {"summary": summary, "remaining": remaining}


def train_subject_model(
    *,
    loaded: LoadedPolicy,
    partition: str,
    dagster_run_id: str,
    training_features: pd.DataFrame,
    asset_store: AssetStore,
    ledger_url: str,
    tracker: Any,
    client: Any,
    tags: dict[str, str],
) -> dict[str, Any]:
    """dp_model for ``privacy_unit: subject``: user-level DP-SGD on the eligible subjects, registered in MLflow.

    The candidates share the policy's epsilon and delta (each gets epsilon/k and delta/k, so their composition,
    all of them charged, is within one run's target); there is no resume: a rerun is a new request (over-count).
    """
    from ppml.deployment import register_version
    from ppml.training.subject_budget import train_subjects_within_budget
    from ppml_assets.common import data_scope, dp_config, feature_splits, open_ledger, training_configs

    privacy = loaded.policy.privacy
    splits = feature_splits(training_features)
    pseudonyms = training_pseudonyms(asset_store, partition, loaded, training_features)
    subjects = len(set(pseudonyms.tolist()))
    configs = training_configs(loaded, splits["train"])
    whole = dp_config(loaded, subjects)  # per person: delta from the number of subjects, not of records
    dp = replace(
        whole, target_epsilon=whole.target_epsilon / len(configs), target_delta=whole.target_delta / len(configs)
    )
    scope = data_scope(loaded, partition, splits["train"])
    lifetime = lifetime_for_subjects(loaded, subjects)
    store = open_ledger(ledger_url, loaded)
    try:
        result = train_subjects_within_budget(
            splits["train"],
            pseudonyms,
            splits["validation"],
            configs,
            dp,
            ledger=store,
            scope=scope,
            lifetime=lifetime,
            min_eligible=privacy.min_eligible_subjects,
            record_unit_group_size=privacy.max_records_per_subject,
            request_key=f"dp_model:{partition}:{dagster_run_id}",
            dagster_run_id=dagster_run_id,
        )
    finally:
        store.close()
    model = result.model
    mlflow_run_id = tracker.start_run(f"dp-subject-{partition}", tags=tags)
    tracker.log_training(mlflow_run_id, model, {"ledger_run_id": result.ledger_run_id, "privacy_unit": "subject"})
    model_uri = tracker.log_model(mlflow_run_id, model)
    tracker.end_run(mlflow_run_id)
    model_name = f"ppml-{loaded.policy.name}"
    version = register_version(
        client, model_name, model_uri, mlflow_run_id, {**tags, "ppml.epsilon": f"{model.epsilon:.6f}"}
    )
    return _subject_summary(
        loaded, result, splits, scope, lifetime, dp, len(configs), model_name, version, model_uri, mlflow_run_id
    )


def _subject_summary(
    loaded: LoadedPolicy,
    result: Any,
    splits: dict,
    scope: Any,
    lifetime: LifetimeBudget,
    dp: Any,
    candidates: int,
    model_name: str,
    version: str,
    model_uri: str,
    mlflow_run_id: str,
) -> dict[str, Any]:
    """The same keys as the record unit's summary (evaluation, gate and report read them), plus the per-person facts."""
    model, privacy = result.model, loaded.policy.privacy
    reservation = result.reservation.to_dict()
    spent_after = float(result.accounts["max_subject_epsilon"])
    return {
        "training_identity": "",
        "reused": False,
        "privacy_unit": "subject",
        "validation_accuracy": result.validation_accuracies[result.selected_index],
        "model": model.config.model.describe(),
        "model_name": model_name,
        "model_version": version,
        "model_uri": model_uri,
        "mlflow_run_id": mlflow_run_id,
        "mlflow_parent_run_id": None,
        "epsilon": float(model.epsilon),
        "delta": float(model.delta),
        "epsilon_including_selection": float(model.epsilon) * candidates,  # basic composition: an upper bound
        "target_epsilon": privacy.epsilon,
        "target_delta": dp.target_delta * candidates,
        "noise_multiplier": model.noise_multiplier,
        "sample_rate": model.sample_rate,
        "steps": model.steps,
        "epochs": model.config.epochs,
        "batch_size": model.config.batch_size,
        "learning_rate": model.config.learning_rate,
        "config": model.config.to_params(),
        "candidate_budget": "split",
        "candidate_epsilon": dp.target_epsilon,
        "max_grad_norm": loaded.policy.training.max_grad_norm,
        "accountant": loaded.policy.training.accountant,
        "clipping": model.clipping,
        "device": model.device,
        "candidates_trained": candidates,
        "candidates": [{"index": i, "validation_accuracy": a} for i, a in enumerate(result.validation_accuracies)],
        "feature_names": list(splits["train"].feature_names),
        "resumed": False,
        "subjects": _per_person_facts(result, privacy, reservation, spent_after),
        "ledger": {
            "scope": {
                "dataset": scope.dataset,
                "partitions": len(scope.partitions),
                "record_set_hash": scope.record_set_hash,
            },
            "scope_label": f"{scope.dataset}, {len(scope.partitions)} daily partitions, per subject",
            "request_id": reservation["request_id"],
            "spent_after": spent_after,
            "spent_all_runs": spent_after,  # the highest per-person epsilon: what the lifetime requirement judges
            "charged": float(model.epsilon) * candidates,
            "spent_before": reservation["max_subject_epsilon_before"],
            "lifetime_budget": lifetime.epsilon,
            "remaining": max(lifetime.epsilon - spent_after, 0.0),
            "composition": f"per-subject Renyi filter at order {reservation['filter_order']:g}",
        },
    }


def _per_person_facts(result: Any, privacy: Any, reservation: dict[str, Any], spent_after: float) -> dict[str, Any]:
    """Who was eligible, trained or excluded, and the highest per-person epsilon before and after (aggregates)."""
    accounts = result.accounts
    return {
        "epsilon_per_person": float(result.model.epsilon),
        "eligible_subjects": reservation["eligible_subjects"],
        "excluded_subjects": reservation["excluded_subjects"],
        "subjects_trained": result.subjects_trained,
        "records_trained": result.records_trained,
        "max_records_per_subject": privacy.max_records_per_subject,
        "min_eligible_subjects": privacy.min_eligible_subjects,
        "max_subject_epsilon_before": reservation["max_subject_epsilon_before"],
        "max_subject_epsilon_after": spent_after,
        "filter_order": reservation["filter_order"],
        "accounts": {k: accounts[k] for k in ("subjects", "cohorts", "lifetime_delta")},
        "notes": result.notes,
    }


def subject_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """Asset metadata of a subject-unit dp_model: per-person epsilon and the filter's counts (aggregates only)."""
    subjects = summary["subjects"]
    return {
        "privacy_unit": "subject",
        "epsilon_per_person": round(subjects["epsilon_per_person"], 6),
        "eligible_subjects": subjects["eligible_subjects"],
        "excluded_subjects": subjects["excluded_subjects"],
        "max_subject_epsilon": round(subjects["max_subject_epsilon_after"], 6),
    }
