"""Thin shared helpers of the training and evaluation assets: policy settings to engine configs, and result
shaping for metadata and evidence.json."""

import dataclasses
from typing import Any

import pandas as pd
from dagster import AssetKey, AssetRecordsFilter

from ppml.evaluation import lira_offline_attack, loss_threshold_attack
from ppml.ledger import DataScope, PrivacyLedger
from ppml.policy import LoadedPolicy
from ppml.preparation import LABEL_COLUMN, SPLIT_COLUMN
from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig
from ppml.training.planning import derive_candidates
from ppml_assets.settings import window_partition_keys


def feature_splits(features: pd.DataFrame) -> dict[str, TabularSplit]:
    """The encoded features as one TabularSplit per split name."""
    names = [c for c in features.columns if c not in (LABEL_COLUMN, SPLIT_COLUMN)]
    # the label's classes are 0..K-1 over every split (preparation encodes a multi-class label by its index)
    n_classes = max(2, int(features[LABEL_COLUMN].max()) + 1) if len(features) else 2
    splits = {}
    for split in ("train", "validation", "test"):
        part = features[features[SPLIT_COLUMN] == split]
        splits[split] = TabularSplit(
            X=part[names].to_numpy(dtype="float32"),
            y=part[LABEL_COLUMN].to_numpy(dtype="int64"),
            feature_names=tuple(names),
            n_classes=n_classes,
        )
    return splits


def training_configs(loaded: LoadedPolicy, train: TabularSplit | None = None) -> list[TrainingConfig]:
    """The DP candidates (selection happens on the validation split).

    ``training.candidates: auto`` with the training split: derived from its n and d and the policy's epsilon
    (ppml.training.planning). Otherwise (``listed``, or no split given) one candidate per listed learning rate.
    """
    settings = loaded.policy.training
    if settings.candidates == "auto" and train is not None:
        return derive_candidates(train.n, train.n_features, loaded.policy.privacy.epsilon, seed=settings.seed)
    spec = ModelSpec(kind=settings.model, hidden_sizes=tuple(settings.hidden_sizes) if settings.model == "mlp" else ())
    return [
        TrainingConfig(
            model=spec,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            max_physical_batch_size=max(settings.batch_size, 1024),
            learning_rate=rate,
            optimizer="sgd",
            seed=settings.seed,
        )
        for rate in settings.candidate_learning_rates
    ]


def selected_training_config(loaded: LoadedPolicy, dp_model: dict[str, Any]) -> TrainingConfig:
    """The configuration dp_model selected (model, batch, epochs, rate), for reference models and audits."""
    params = dp_model.get("config")
    if not params:  # a dp_model materialized before the selected config was recorded
        return dataclasses.replace(training_configs(loaded)[0], learning_rate=dp_model["learning_rate"])
    hidden = tuple(int(h) for h in str(params["hidden_sizes"]).split(",") if h)
    return TrainingConfig(
        model=ModelSpec(kind=params["model_kind"], hidden_sizes=hidden),
        epochs=int(params["epochs"]),
        batch_size=int(params["batch_size"]),
        max_physical_batch_size=int(params["max_physical_batch_size"]),
        learning_rate=float(params["lr"]),
        optimizer=params["optimizer"],
        seed=int(params["seed"]),
        weight_decay=float(params["weight_decay"]),
        momentum=float(params["momentum"]),
    )


def dp_config(loaded: LoadedPolicy, n_train: int) -> DPConfig:
    """The policy's DP settings for a run on ``n_train`` records (``delta: auto`` is resolved from n)."""
    privacy, settings = loaded.policy.privacy, loaded.policy.training
    return DPConfig(
        target_epsilon=privacy.epsilon,
        target_delta=privacy.delta_for(n_train),
        max_grad_norm=settings.max_grad_norm,
        accountant=settings.accountant,
    )


def data_scope(loaded: LoadedPolicy, as_of: str, train: TabularSplit | None = None) -> DataScope:
    """The people a run touches: keyed by the policy's data-set identity (``dataset.id``), never by its name, so a
    renamed or re-versioned policy keeps the account. By default everything on one data set composes (time
    partitions are not disjoint in people); ``record_accounting: window`` keeps it per day instead, sound for the
    record unit because a record lies in exactly one daily partition."""
    return DataScope(
        dataset=loaded.policy.dataset.id,
        partitions=tuple(window_partition_keys(as_of, loaded.policy.collection.training_window_days)),
        record_set_hash=train.record_set_hash() if train is not None else "",
        partitions_disjoint=per_day_accounting(loaded),
    )


def per_day_accounting(loaded: LoadedPolicy) -> bool:
    """Whether the ledger keeps this policy's budget per daily partition (``privacy.record_accounting: window``)."""
    return loaded.policy.privacy.record_accounting == "window"


def open_ledger(url: str, loaded: LoadedPolicy) -> PrivacyLedger:
    """The ledger, with any pre-0002 account kept under this policy's name merged into its data-set identity."""
    store = PrivacyLedger(url)
    try:
        store.adopt_policy_name_scope(
            loaded.policy.name,
            DataScope(dataset=loaded.policy.dataset.id, partitions_disjoint=per_day_accounting(loaded)),
        )
    except BaseException:
        store.close()
        raise
    return store


UTILITY_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1", "ece")


def protected_groups(cleaned_records: pd.DataFrame, loaded: LoadedPolicy, split: str) -> dict[str, list[str]]:
    """Protected-attribute values of one split's rows, aligned with training_features (same row order)."""
    rows = cleaned_records[cleaned_records[SPLIT_COLUMN] == split]
    return {
        attribute: rows[attribute].astype(str).tolist()
        for attribute in loaded.policy.schema_.protected_attributes
        if attribute in rows.columns
    }


def utility_summary(report: dict) -> dict:
    """Flatten a UtilityReport dict into the point estimates, intervals and per-group accuracies."""
    metrics = report["metrics"]
    groups = []
    for attribute, breakdown in report["groups"].items():
        for group, values in breakdown["groups"].items():
            if values["reported"]:
                groups.append(
                    {
                        "attribute": attribute,
                        "group": group,
                        "n": values["n"],
                        "accuracy": values["metrics"]["accuracy"]["value"],
                    }
                )
    return {
        "point": {name: metrics[name]["value"] for name in UTILITY_METRICS if name in metrics},
        "ci": {
            name: [metrics[name]["ci_low"], metrics[name]["ci_high"]] for name in UTILITY_METRICS if name in metrics
        },
        "groups": groups,
        "group_gaps": {attribute: b["gaps"].get("accuracy") for attribute, b in report["groups"].items()},
    }


def attack_row(result: dict, target: str, low_fpr_keys: tuple[str, str] = ("0.001", "0.01")) -> dict:
    return {
        "attack": result["attack"],
        "target": target,
        "auc": result["roc_auc"],
        "advantage": result["advantage"],
        "tpr_at_0_1pct_fpr": result["tpr_at_fpr"].get(low_fpr_keys[0], 0.0),
        "tpr_at_1pct_fpr": result["tpr_at_fpr"].get(low_fpr_keys[1], 0.0),
        "n_members": result["n_members"],
        "n_non_members": result["n_non_members"],
        "n_reference_models": result.get("n_reference_models"),
    }


def run_attacks(
    model, splits: dict[str, TabularSplit], train_reference, n_reference: int, name: str, seed: int
) -> list:  # type: ignore[no-untyped-def]
    """Loss-threshold and offline LiRA: members = training split, non-members = test split, reference models
    trained on the validation split (disjoint from both)."""
    results = [loss_threshold_attack(model, splits["train"], splits["test"], name=name, seed=seed)]
    if n_reference > 0:
        results.append(
            lira_offline_attack(
                model,
                splits["train"],
                splits["test"],
                splits["validation"],
                train_reference,
                n_reference,
                name=name,
                seed=seed,
            )
        )
    return results


def latest_metadata(instance: Any, asset: str | AssetKey, partition: str) -> dict[str, Any]:
    """The metadata of an asset partition's latest materialization, as plain values ({} when never materialized).

    A name is an asset of the single-policy default graph; a policy graph's assets are passed by key
    (``asset_store.asset_key(name)``)."""
    key = asset if isinstance(asset, AssetKey) else AssetKey(asset)
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return {}
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}
