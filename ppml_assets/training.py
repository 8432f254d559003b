"""Steps 4–5: accountable DP training, the non-private baseline, and the remaining privacy budget."""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetExecutionContext, MetadataValue

from ppml.deployment import register_version
from ppml.erasure import bind_run, index_root, propagate, snapshot_erased
from ppml.errors import PPMLError
from ppml.evaluation import utility_report
from ppml.ledger import DataScope, LifetimeBudget
from ppml.policy import LoadedPolicy
from ppml.serving.monitoring import input_reference
from ppml.serving.spec import log_serving_spec, serving_spec
from ppml.tracking import TAG_AS_OF, TAG_DAGSTER_RUN, TAG_DATA_HASH, TAG_POLICY_HASH, TAG_WINDOW, TrainingTracker
from ppml.training.accountable import (
    AccountableTrainingResult,
    charge_selection,
    plan_request,
    reserve_request,
    train_candidates,
)
from ppml.training.baseline import train_tuned_baseline
from ppml.training.selection_tracking import window_tag
from ppml_assets.common import (
    attack_row,
    data_scope,
    dp_config,
    feature_splits,
    latest_metadata,
    open_ledger,
    protected_groups,
    run_attacks,
    training_configs,
    utility_summary,
)
from ppml_assets.graph import policy_asset, policy_asset_check
from ppml_assets.metadata import mlflow_model_version_url, mlflow_run_url
from ppml_assets.settings import window_partition_keys
from ppml_assets.subjects import is_subject_unit, subject_budget_status, subject_metadata, train_subject_model
from resources import AssetStore, LedgerResource, MlflowResource, PolicyResource, WorkspacePaths

#: DP training asks the deployment for a GPU: runs carry the tag the QueuedRunCoordinator rations
#: (deploy/dagster.yaml), the op is in the "gpu" pool, and dagster-k8s turns the tag into a resource request.
GPU_OP_TAGS = {
    "ppml/gpu": "1",
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
}


def lineage_tags(context: AssetExecutionContext, loaded: LoadedPolicy, features_hash: str) -> dict[str, str]:
    window = window_partition_keys(context.partition_key, loaded.policy.collection.training_window_days)
    return {
        TAG_DAGSTER_RUN: context.run.run_id,
        TAG_AS_OF: context.partition_key,
        TAG_WINDOW: window_tag(window),
        TAG_POLICY_HASH: loaded.content_hash,
        TAG_DATA_HASH: features_hash,
    }


def _features_hash(context: AssetExecutionContext) -> str:
    event = context.instance.get_latest_materialization_event(context.asset_key_for_input("training_features"))
    return str(event.asset_materialization.metadata["content_sha256"].value) if event else ""


@policy_asset(
    group_name="training",
    pool="gpu",
    op_tags=GPU_OP_TAGS,
    kinds={"pytorch", "opacus", "mlflow"},
)
def dp_model(
    context: AssetExecutionContext,
    training_features: pd.DataFrame,
    policy: PolicyResource,
    ledger: LedgerResource,
    mlflow: MlflowResource,
    paths: WorkspacePaths,
    asset_store: AssetStore,
) -> dict:
    """DP-SGD (Opacus) at the policy's epsilon/delta *including model selection* on the validation split: the
    candidates (derived from n and d unless the policy lists them) are calibrated jointly so that their
    composition is the policy's epsilon, and every candidate is charged to the lifetime ledger before it trains;
    the run is refused when the budget would be exceeded, and a killed run resumes from its checkpoint without
    double- or under-counting. A rerun of a training that completed (same policy version, data and
    configuration; e.g. after a crash in the report) reuses it instead of training and charging again."""
    loaded = policy.load()
    splits = feature_splits(training_features)
    mlflow.configure()
    tracker = TrainingTracker(mlflow.tracking_uri, experiment_name=mlflow.experiment_name)
    scope = data_scope(loaded, context.partition_key, splits["train"])
    features_hash = _features_hash(context)
    tags = lineage_tags(context, loaded, features_hash)
    dp = dp_config(loaded, splits["train"].n)
    configs = training_configs(loaded, splits["train"])
    identity = training_identity(loaded, context.partition_key, features_hash, scope.record_set_hash, configs, dp)
    # Erasure requests reach the versions trained earlier on those subjects before anything can refuse this run
    erasure_root = index_root(asset_store.base_dir, loaded.policy)
    erased = snapshot_erased(erasure_root, context.partition_key)
    erasure = propagate(erasure_root, erased, loaded.policy.collection.erasure_action, mlflow.client())
    if is_subject_unit(loaded):  # per person: user-level DP-SGD through the per-subject filter
        return _dp_model_per_subject(
            context, loaded, training_features, asset_store, ledger, mlflow, tracker, tags, erasure
        )
    completed = completed_training(asset_store, context.partition_key, identity, mlflow.client())
    if completed is not None:
        # The same logical training already finished (e.g. a later step crashed): reuse it, charge nothing.
        context.log.info(f"dp_model: reusing the completed training {completed['mlflow_run_id']}; no new charge")
        summary = {**completed, "reused": True, "erasure": erasure}
        context.add_output_metadata({**_dp_metadata(summary), "reused": True})
        return summary
    store = open_ledger(ledger.url, loaded)
    try:
        spent_before = store.spent(scope, dp.target_delta).epsilon
        request = plan_request(  # plan: validate and calibrate every candidate; nothing reserved yet
            splits["train"],
            splits["validation"],
            configs,
            dp,
            scope=scope,
            lifetime_epsilon=loaded.policy.privacy.lifetime_epsilon_budget,
            checkpoint_dir=paths.checkpoints_dir / loaded.policy.name,
            candidate_budget="composed",
            selection_metric=loaded.policy.training.selection_metric,
            dagster_run_id=context.run.run_id,
        )
        booking = reserve_request(request, store)  # reserve: the whole plan, or refuse over budget
        trained = train_candidates(request, booking, store, tracker=tracker, tags=tags)  # train: pre-charged
        result = charge_selection(request, booking, trained, store, tracker=tracker)  # charge: the selection
    finally:
        store.close()
    model_name, version = _log_dp_model(context, loaded, asset_store, mlflow, splits["train"], result, tags)  # log
    facts = _RunFacts(identity, scope, dp.target_delta, spent_before, erasure, list(splits["train"].feature_names))
    summary = _dp_summary(loaded, result, model_name, version, facts)
    context.add_output_metadata({**_dp_metadata(summary), "reused": False})
    return summary


def _log_dp_model(  # type: ignore[no-untyped-def]
    context: AssetExecutionContext,
    loaded: LoadedPolicy,
    asset_store: AssetStore,
    mlflow: MlflowResource,
    train,
    result: AccountableTrainingResult,
    tags: dict[str, str],
) -> tuple[str, Any]:
    """The selected model's serving spec and registry version, bound to the window for erasure requests."""
    record_serving_spec(context, loaded, asset_store, mlflow.client(), result.mlflow_run_id, train)
    model_name = f"ppml-{loaded.policy.name}"
    version = register_version(
        mlflow.client(),
        model_name,
        result.model_uri,
        result.mlflow_run_id,
        {**tags, "ppml.epsilon": f"{result.epsilon:.6f}"},
    )
    bind_run(
        index_root(asset_store.base_dir, loaded.policy),
        context.partition_key,
        {
            "model_name": model_name,
            "version": version,
            "mlflow_run_id": result.mlflow_run_id,
            "dagster_run_id": context.run.run_id,
            "epsilon": result.epsilon_including_selection,
            "delta": result.delta,
            "privacy_unit": loaded.policy.privacy.privacy_unit,
        },
    )
    return model_name, version


@dataclass(frozen=True)
class _RunFacts:
    """What dp_model knew before training that its stored summary repeats."""

    identity: str
    scope: DataScope
    target_delta: float
    spent_before: float
    erasure: Any
    feature_names: list[str]


def _dp_summary(
    loaded: LoadedPolicy, result: AccountableTrainingResult, model_name: str, version: Any, facts: _RunFacts
) -> dict:
    """What dp_model stores: the selected model's facts, every candidate, and the ledger's figures (aggregates)."""
    selected, scope = result.model, facts.scope
    return {
        "training_identity": facts.identity,
        "reused": False,
        "validation_accuracy": selected.history[-1].validation_accuracy if selected.history else None,
        "model": selected.config.model.describe(),
        "model_name": model_name,
        "model_version": version,
        "model_uri": result.model_uri,
        "mlflow_run_id": result.mlflow_run_id,
        "mlflow_parent_run_id": result.mlflow_parent_run_id,
        "epsilon": result.epsilon,
        "delta": result.delta,
        "epsilon_including_selection": result.epsilon_including_selection,
        "target_epsilon": loaded.policy.privacy.epsilon,
        "target_delta": facts.target_delta,
        "noise_multiplier": selected.noise_multiplier,
        "sample_rate": selected.sample_rate,
        "steps": selected.steps,
        "epochs": selected.config.epochs,
        "batch_size": selected.config.batch_size,
        "learning_rate": selected.config.learning_rate,
        "config": selected.config.to_params(),
        "candidate_budget": "composed",
        "candidate_epsilon": result.candidates[0].dp.target_epsilon,
        "max_grad_norm": loaded.policy.training.max_grad_norm,
        "accountant": loaded.policy.training.accountant,
        "clipping": selected.clipping,
        "device": selected.device,
        "candidates_trained": len(result.candidates),
        "candidates": [candidate.to_dict() for candidate in result.candidates],
        "feature_names": facts.feature_names,
        "resumed": result.resumed,
        "erasure": facts.erasure,
        "ledger": {
            "scope": {
                "dataset": scope.dataset,
                "partitions": len(scope.partitions),
                "record_set_hash": scope.record_set_hash,
            },
            "scope_label": f"{scope.dataset}, {len(scope.partitions)} daily partitions",
            "request_id": result.request_id,
            "spent_after": result.lifetime_spent.epsilon,
            "charged": result.epsilon_including_selection,
            "spent_before": facts.spent_before,
            "lifetime_budget": loaded.policy.privacy.lifetime_epsilon_budget,
            "remaining": result.lifetime_remaining,
            "composition": result.lifetime_spent.method,
        },
    }


def record_serving_spec(  # type: ignore[no-untyped-def]
    context: AssetExecutionContext, loaded: LoadedPolicy, asset_store: AssetStore, client, run_id: str, train
) -> None:
    """Store with the model how a raw record becomes its input (released levels, bins, feature names): ppml serve
    replays exactly this, so the service scores what the model was trained on."""
    partition = context.partition_key
    cleaned = latest_metadata(context.instance, asset_store.asset_key("cleaned_records"), partition)
    if "preparation_report" not in cleaned:  # cleaned_records came from elsewhere: ppml serve refuses the version
        context.log.warning("dp_model: no preparation report in this instance; the serving spec is not recorded")
        return
    anonymized = latest_metadata(context.instance, asset_store.asset_key("anonymized_records"), partition)
    spec = serving_spec(
        anonymized.get("serving_generalization", {}),
        cleaned["preparation_report"],
        list(train.feature_names),
        policy_sha256=loaded.content_hash,
        missing_value_marker=loaded.policy.schema_.missing_value_marker,
        reference=input_reference(train.X, train.feature_names),  # what serving monitoring compares inputs with
    )
    log_serving_spec(client, run_id, spec)


def _dp_model_per_subject(
    context: AssetExecutionContext,
    loaded: LoadedPolicy,
    training_features: pd.DataFrame,
    asset_store: AssetStore,
    ledger: LedgerResource,
    mlflow: MlflowResource,
    tracker: TrainingTracker,
    tags: dict[str, str],
    erasure: Any,
) -> dict:
    """dp_model for ``privacy_unit: subject`` (ppml_assets.subjects), bound to the window for erasure requests."""
    summary = train_subject_model(
        loaded=loaded,
        partition=context.partition_key,
        dagster_run_id=context.run.run_id,
        training_features=training_features,
        asset_store=asset_store,
        ledger_url=ledger.url,
        tracker=tracker,
        client=mlflow.client(),
        tags=tags,
    )
    bind_run(  # the version is bound to the window's subjects (a superset of those it trained on)
        index_root(asset_store.base_dir, loaded.policy),
        context.partition_key,
        {
            "model_name": summary["model_name"],
            "version": summary["model_version"],
            "mlflow_run_id": summary["mlflow_run_id"],
            "dagster_run_id": context.run.run_id,
            "epsilon": summary["epsilon_including_selection"],
            "delta": summary["delta"],
            "privacy_unit": "subject",
        },
    )
    record_serving_spec(
        context,
        loaded,
        asset_store,
        mlflow.client(),
        summary["mlflow_run_id"],
        feature_splits(training_features)["train"],
    )
    summary["erasure"] = erasure
    context.add_output_metadata({**_dp_metadata(summary), "reused": False, **subject_metadata(summary)})
    return summary


def _dp_metadata(summary: dict) -> dict:
    return {
        "epsilon": round(summary["epsilon"], 6),
        "delta": summary["delta"],
        "target_epsilon": summary["target_epsilon"],
        "noise_multiplier": round(float(summary["noise_multiplier"] or 0), 6),
        "steps": summary["steps"],
        "mlflow_run_id": summary["mlflow_run_id"],
        "mlflow_run": mlflow_run_url(summary["mlflow_run_id"]),
        "model_version": summary["model_version"],
        "mlflow_model_version": mlflow_model_version_url(summary["model_name"], summary["model_version"]),
        "lifetime_spent_epsilon": round(summary["ledger"]["spent_after"], 6),
        "lifetime_remaining_epsilon": round(summary["ledger"]["remaining"], 6),
        "candidates": MetadataValue.json(summary["candidates"]),
        "validation_accuracy": summary.get("validation_accuracy"),
    }


def training_identity(
    loaded: LoadedPolicy, partition: str, features_hash: str, record_set_hash: str, configs: list, dp: Any
) -> str:
    """What makes two trainings one logical training: policy version, data and the derived configuration."""
    document = {
        "policy_hash": loaded.content_hash,
        "partition": partition,
        "features_hash": features_hash,
        "record_set_hash": record_set_hash,
        "configs": [repr(config) for config in configs],
        "dp": repr(dp),
    }
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()


def completed_training(asset_store: AssetStore, partition: str, identity: str, client: Any) -> dict | None:
    """The stored dp_model of this partition when it is the same logical training and its model still exists."""
    try:
        stored = asset_store.read_stored("dp_model", partition)
    except PPMLError:
        return None
    if not isinstance(stored, dict) or stored.get("training_identity") != identity:
        return None
    try:
        client.get_model_version(stored["model_name"], str(stored["model_version"]))
    except Exception:  # the registry lost it (or is another one): train again rather than point at nothing
        return None
    return stored


@policy_asset(group_name="training", kinds={"scikit-learn", "pytorch", "mlflow"})
def non_private_baseline(
    context: AssetExecutionContext,
    training_features: pd.DataFrame,
    cleaned_records: pd.DataFrame,
    policy: PolicyResource,
    ledger: LedgerResource,
    mlflow: MlflowResource,
) -> dict:
    """The best non-private model a competent data scientist would build on the same features (when the policy
    allows one), tagged never-deploy: a small grid over logistic regression, gradient boosting and the MLP,
    chosen on the validation split, so that the utility gap measures what privacy costs rather than what the DP
    model's settings cost. Its weights never leave this step, so its utility and attack results are computed
    here and only those aggregates are stored."""
    loaded = policy.load()
    if not loaded.policy.training.train_non_private_baseline:
        context.add_output_metadata({"skipped": True})
        return {"skipped": True}
    splits = feature_splits(training_features)
    mlflow.configure()
    tracker = TrainingTracker(mlflow.tracking_uri, experiment_name=mlflow.experiment_name)
    settings = loaded.policy.training
    store = open_ledger(ledger.url, loaded)
    try:
        result = train_tuned_baseline(
            splits["train"],
            splits["validation"],
            hidden_sizes=settings.hidden_sizes,
            seed=settings.seed,
            ledger=store,
            scope=data_scope(loaded, context.partition_key, splits["train"]),
            tracker=tracker,
            tags=lineage_tags(context, loaded, _features_hash(context)),
            dagster_run_id=context.run.run_id,
        )
    finally:
        store.close()
    tuned = result.baseline
    test = splits["test"]
    utility = utility_summary(
        utility_report(
            test.y,
            tuned.model.predict_proba(test.X),
            model="baseline",
            groups=protected_groups(cleaned_records, loaded, "test"),
            seed=settings.seed,
        ).to_dict()
    )
    # LiRA's reference models are trained like the target: the chosen family and settings, refitted.
    attacks = run_attacks(
        tuned.model, splits, tuned.refit, loaded.policy.evaluation.reference_models, "baseline", settings.seed
    )
    summary = {
        "skipped": False,
        "mlflow_run_id": result.mlflow_run_id,
        "ledger_run_id": result.ledger_run_id,
        "tuning": tuned.to_dict(),
        "utility": utility,
        "attacks": [attack_row(a.to_dict(), "non-private baseline") for a in attacks],
        "roc_curves": {a.attack: {"fpr": a.roc_fpr, "tpr": a.roc_tpr} for a in attacks},
    }
    context.add_output_metadata(
        {
            "mlflow_run_id": result.mlflow_run_id,
            "mlflow_run": mlflow_run_url(result.mlflow_run_id),
            "family": tuned.chosen.family,
            "settings": MetadataValue.json(tuned.chosen.settings),
            "validation_accuracy": round(tuned.chosen.validation_accuracy, 4),
            "test_accuracy": round(utility["point"]["accuracy"], 4),
            "candidates": MetadataValue.json([c.to_dict() for c in tuned.candidates]),
            "tuning_seconds": round(tuned.seconds, 2),
            "attacks": MetadataValue.json(summary["attacks"]),
        }
    )
    return summary


@policy_asset(
    group_name="training",
    # after everything that charges the ledger in a run, so the figure includes all of it
    deps=["dp_model", "privacy_audit", "privacy_evaluation", "dp_statistics"],
    kinds={"json"},
)
def privacy_budget(
    context: AssetExecutionContext, policy: PolicyResource, ledger: LedgerResource, asset_store: AssetStore
) -> dict:
    """Remaining lifetime epsilon of the policy's data-set identity, from the ledger (every charge composed: DP
    training and its candidates, the audit run, LiRA's DP reference models, the OpenDP summary); warns when less
    than a fifth is left."""
    loaded = policy.load()
    privacy = loaded.policy.privacy
    delta = privacy.delta
    if delta == "auto":  # resolved from n by dp_model; the budget is stated at the same delta
        trained = asset_store.read_stored("dp_model", context.partition_key)
        delta = float(trained.get("target_delta", trained["delta"]))
    store = open_ledger(ledger.url, loaded)
    try:
        if is_subject_unit(loaded):  # per person: the highest epsilon of anyone, from the per-subject accounts
            trained = asset_store.read_stored("dp_model", context.partition_key)
            lifetime_delta = float(trained["subjects"]["accounts"]["lifetime_delta"])
            per_subject = subject_budget_status(store, loaded, lifetime_delta)
            statuses = [
                {"scope": "per subject", **per_subject["summary"], "remaining_epsilon": per_subject["remaining"]}
            ]
        else:
            statuses = [
                s.to_dict()
                for s in store.budget_status(
                    loaded.policy.dataset.id, LifetimeBudget(privacy.lifetime_epsilon_budget, delta)
                )
            ]
    finally:
        store.close()
    remaining = min((s["remaining_epsilon"] for s in statuses), default=privacy.lifetime_epsilon_budget)
    near_exhaustion = remaining < 0.2 * privacy.lifetime_epsilon_budget
    if near_exhaustion:
        context.log.warning(
            f"privacy budget of data set {loaded.policy.dataset.id} nearly exhausted: {remaining:.3f} of "
            f"{privacy.lifetime_epsilon_budget} epsilon left"
        )
    context.add_output_metadata(
        {
            "remaining_epsilon": round(remaining, 6),
            "lifetime_epsilon_budget": privacy.lifetime_epsilon_budget,
            "near_exhaustion": near_exhaustion,
            "scopes": MetadataValue.json(statuses),
            "runs_possible_at_target": int(remaining // privacy.epsilon),
        }
    )
    return {
        "dataset": loaded.policy.dataset.id,
        "scopes": statuses,
        "remaining_epsilon": remaining,
        "near_exhaustion": near_exhaustion,
    }


@policy_asset_check(asset="privacy_budget")
def budget_not_near_exhaustion(privacy_budget: dict) -> AssetCheckResult:
    """A warning (not a gate) when less than a fifth of the lifetime budget is left: the next retrainings will be
    refused, so the data protection officer should plan (new data, a lower per-run epsilon, or a budget review)."""
    return AssetCheckResult(
        passed=not privacy_budget["near_exhaustion"],
        severity=AssetCheckSeverity.WARN,
        description=f"{privacy_budget['remaining_epsilon']:.3f} lifetime epsilon left",
        metadata={"remaining_epsilon": float(privacy_budget["remaining_epsilon"])},
    )
