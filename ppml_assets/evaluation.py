"""Step 6: utility versus objectives, membership-inference attacks and the one-run empirical epsilon audit.

The DP model is always scored as deployed — loaded back from its MLflow artifact. The non-private baseline's
weights never leave the process that trained it, so its aggregates (utility, attack results) are computed in
``non_private_baseline`` and read from there.
"""

import dataclasses

import pandas as pd
from dagster import AssetExecutionContext, Config, MetadataValue

from ppml.deployment import ServedModel
from ppml.documents.measurements import model_curves
from ppml.evaluation import (
    AuditSettings,
    group_error_rates,
    run_one_run_audit,
    strongest_attack,
    trivial_predictor,
    utility_report,
)
from ppml.evaluation.audit_whitebox import WhiteBoxSettings, run_whitebox_audit
from ppml.evaluation.charged_audit import ChargedAuditTraining
from ppml.evaluation.charged_reference import ChargedReferenceTraining
from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.preparation import prepare_like_training
from ppml.tracking_evidence import log_audit_run
from ppml.training import TabularSplit, train_dp
from ppml.training.accountable import train_within_budget
from ppml_assets.common import (
    attack_row,
    data_scope,
    dp_config,
    feature_splits,
    latest_metadata,
    open_ledger,
    protected_groups,
    run_attacks,
    selected_training_config,
    utility_summary,
)
from ppml_assets.graph import policy_asset
from ppml_assets.metadata import mlflow_run_url
from resources import AssetStore, LedgerResource, MlflowResource, PolicyResource, WorkspacePaths


@policy_asset(group_name="evaluation", kinds={"json"})
def model_evaluation(
    context: AssetExecutionContext,
    dp_model: dict,
    non_private_baseline: dict,
    training_features: pd.DataFrame,
    cleaned_records: pd.DataFrame,
    policy: PolicyResource,
    asset_store: AssetStore,
    mlflow: MlflowResource,
) -> dict:
    """Accuracy, balanced accuracy, ROC AUC, F1 and calibration error with bootstrap intervals on the test
    split, per protected group, next to the non-private baseline and the policy's objectives. In a run the drift
    sensor requested, also the deployed model's utility on the drifted partition."""
    loaded = policy.load()
    splits = feature_splits(training_features)
    model = ServedModel(dp_model["model_uri"], mlflow.tracking_uri)
    test = splits["test"]
    scores = model.predict_proba(test.X)
    record_score_reference(mlflow, dp_model, scores)
    measured = utility_report(
        test.y,
        scores,
        model="dp",
        groups=protected_groups(cleaned_records, loaded, "test"),
        seed=loaded.policy.training.seed,
    )
    report = measured.to_dict()
    dp = utility_summary(report)
    error_rates = group_error_rates(measured).to_dict()
    baseline = None if non_private_baseline.get("skipped") else non_private_baseline["utility"]
    objectives = loaded.policy.objectives
    drifted = context.run.tags.get("ppml/drifted_partition")
    newest = (
        _evaluate_on_partition(
            context,
            drifted,
            model,
            loaded,
            asset_store,
            list(splits["test"].feature_names),
            recorded_serving_spec(mlflow.client(), dp_model.get("mlflow_run_id")),
        )
        if drifted
        else None
    )
    result = {
        "dp": dp["point"],
        "dp_ci": dp["ci"],
        "baseline": baseline["point"] if baseline else None,
        "baseline_ci": baseline["ci"] if baseline else None,
        "baseline_model": None if non_private_baseline.get("skipped") else non_private_baseline.get("tuning"),
        "trivial": trivial_predictor(test.y, test.n_classes),
        "curves": model_curves(test.y, scores),  # ROC and reliability diagram for the report's plots
        "classes": loaded.policy.schema_.label_classes(),
        "group_error_rates": error_rates,
        "objectives": {"accuracy": objectives.min_accuracy, "roc_auc": objectives.min_roc_auc},
        "max_utility_gap": objectives.max_utility_gap,
        "min_margin_over_trivial": objectives.min_margin_over_trivial,
        "max_group_error_rate_gap": objectives.max_group_error_rate_gap,
        "groups": _group_accuracies(dp["groups"], baseline),
        "group_accuracy_gaps": dp["group_gaps"],
        "test_records": len(test.y),
        "report": report,
        "drifted_partition": newest,
    }
    context.add_output_metadata(_evaluation_metadata(dp, baseline, objectives, error_rates, newest))
    return result


def record_score_reference(mlflow: MlflowResource, dp_model: dict, scores) -> None:  # type: ignore[no-untyped-def]
    """The test split's score distribution with the training run: what serving monitoring compares the served
    predictions with (binary models, the ones ppml serve serves)."""
    from ppml.serving.monitoring import log_score_reference, score_reference

    if dp_model.get("mlflow_run_id") and getattr(scores, "ndim", 1) == 1 and len(scores):
        log_score_reference(mlflow.client(), dp_model["mlflow_run_id"], score_reference(scores))


def _group_accuracies(groups: list[dict], baseline: dict | None) -> list[dict]:
    """Per protected group, the DP model's accuracy next to the baseline's on the same group (None without one)."""
    return [
        {
            "attribute": g["attribute"],
            "group": g["group"],
            "n": g["n"],
            "dp_accuracy": g["accuracy"],
            "baseline_accuracy": next(
                (
                    b["accuracy"]
                    for b in (baseline or {}).get("groups", [])
                    if (b["attribute"], b["group"]) == (g["attribute"], g["group"])
                ),
                None,
            ),
        }
        for g in groups
    ]


def _evaluation_metadata(  # type: ignore[no-untyped-def]
    dp: dict, baseline: dict | None, objectives, error_rates: dict, newest: dict | None
) -> dict:
    return {
        "accuracy": round(dp["point"]["accuracy"], 4),
        "roc_auc": round(dp["point"]["roc_auc"], 4),
        "baseline_accuracy": round(baseline["point"]["accuracy"], 4) if baseline else None,
        "min_accuracy": objectives.min_accuracy,
        "min_roc_auc": objectives.min_roc_auc,
        "group_accuracy_gaps": MetadataValue.json(dp["group_gaps"]),
        "largest_group_error_rate_gap": round(error_rates["largest_gap"], 4),
        "confidence_intervals": MetadataValue.json(dp["ci"]),
        **({"drifted_partition": MetadataValue.json(newest)} if newest else {}),
    }


def recorded_serving_spec(client, run_id: str | None) -> dict | None:  # type: ignore[no-untyped-def]
    """The training run's serving spec (every released generalization, handles and bins included), or None for a
    model trained before ppml recorded it."""
    from ppml.errors import PPMLError
    from ppml.serving.spec import load_serving_spec

    if not run_id:
        return None
    try:
        return load_serving_spec(client, run_id, "dp_model")
    except PPMLError:
        return None


def _evaluate_on_partition(context, partition: str, model, loaded, asset_store, feature_names: list[str], spec) -> dict:  # type: ignore[no-untyped-def]
    """Utility of the deployed model on a newer partition, prepared exactly like its training window: the
    re-evaluation the drift sensor asks for. The features replay the model's serving spec when it has one (the
    release-safety handles' generalizations are only recorded there), else the window's anonymization levels."""
    from ppml.anonymization.policy_config import config_from_policy
    from ppml_assets.anonymization import with_missing_values

    as_of = context.partition_key
    fresh = asset_store.read_stored("deidentified_records", partition)
    config = with_missing_values(config_from_policy(loaded), fresh, loaded.policy.schema_.missing_value_marker)
    key = asset_store.asset_key
    anonymization = latest_metadata(context.instance, key("anonymized_records"), as_of)["anonymization_report"]
    preparation = latest_metadata(context.instance, key("cleaned_records"), as_of)["preparation_report"]
    X, y = prepare_like_training(
        fresh,
        loaded.policy,
        anonymization["transformation"],
        {name: [list(row) for row in h.rows] for name, h in config.quasi_identifiers.items() if hasattr(h, "rows")},
        preparation["decisions"],
        preparation["bin_edges"],
        feature_names,
    )
    replayed = spec is not None and list(spec["feature_names"]) == list(feature_names)
    if replayed:
        from ppml.serving.spec import FeatureBuilder

        builder = FeatureBuilder(spec)
        records = fresh.astype(object).where(fresh.notna(), None).to_dict("records")
        X = builder.matrix([builder.released_values(record) for record in records])
    report = utility_report(y, model.predict_proba(X), model="dp", seed=loaded.policy.training.seed).to_dict()
    point = {name: report["metrics"][name]["value"] for name in ("accuracy", "roc_auc")}
    objectives = loaded.policy.objectives
    meets = point["accuracy"] >= objectives.min_accuracy and point["roc_auc"] >= objectives.min_roc_auc
    features = "serving spec" if replayed else "anonymization levels"
    return {"partition": partition, "records": len(y), "features": features, **point, "meets_objectives": bool(meets)}


@policy_asset(group_name="evaluation", kinds={"pytorch", "json"})
def privacy_evaluation(
    context: AssetExecutionContext,
    dp_model: dict,
    non_private_baseline: dict,
    training_features: pd.DataFrame,
    policy: PolicyResource,
    ledger: LedgerResource,
    mlflow: MlflowResource,
) -> dict:
    """Membership inference against the deployed DP model (loss threshold and offline LiRA with reference
    models trained like the target on disjoint data), next to the same attacks on the non-private baseline. The
    DP reference models train on the validation split of the same people and the released attack result depends
    on them, so they are charged to the lifetime ledger (one run: disjoint slices compose in parallel)."""
    loaded = policy.load()
    splits = feature_splits(training_features)
    model = ServedModel(dp_model["model_uri"], mlflow.tracking_uri)
    config = selected_training_config(loaded, dp_model)
    dp = dp_config(loaded, splits["train"].n)
    privacy = loaded.policy.privacy
    store = open_ledger(ledger.url, loaded)
    charged = ChargedReferenceTraining(
        store,
        data_scope(loaded, context.partition_key, splits["validation"]),
        LifetimeBudget(privacy.lifetime_epsilon_budget, dp.target_delta),
        config,
        dp,
        request_key=f"lira-reference:{context.partition_key}:{context.run.run_id}",
        dagster_run_id=context.run.run_id,
    )
    try:
        results = run_attacks(
            model, splits, charged, loaded.policy.evaluation.reference_models, "dp", loaded.policy.training.seed
        )
        reference_ledger_runs = charged.settle()
    except BaseException as error:
        charged.fail(error)
        raise
    finally:
        store.close()
    strongest = strongest_attack(results, low_fpr=privacy.low_fpr)
    dp_rows = [attack_row(r.to_dict(), "DP model") for r in results]
    baseline_rows = [] if non_private_baseline.get("skipped") else non_private_baseline["attacks"]
    curves = {f"{r.attack} on DP model": {"fpr": r.roc_fpr, "tpr": r.roc_tpr} for r in results}
    if not non_private_baseline.get("skipped"):
        curves |= {f"{name} on baseline": curve for name, curve in non_private_baseline["roc_curves"].items()}
    result = {
        "attacks": dp_rows + baseline_rows,
        "roc_curves": curves,
        "strongest_attack_on_dp_model": strongest,
        "summary": dp_rows,
        "reference_models_ledger_runs": reference_ledger_runs,
        "limits": {
            "max_auc": privacy.max_membership_inference_auc,
            "max_tpr_at_low_fpr": privacy.max_membership_inference_tpr_at_low_fpr,
            "low_fpr": privacy.low_fpr,
        },
    }
    context.add_output_metadata(
        {
            "strongest_attack_auc": round(strongest["auc"], 4),
            "strongest_attack_tpr_at_low_fpr": round(strongest["tpr_at_low_fpr"], 4),
            "strongest_attack": strongest["name"],
            "attacks": MetadataValue.json(result["attacks"]),
        }
    )
    return result


class AuditFaultInjection(Config):
    """Fault injection that validates the audit itself: the audit run adds noise with this multiplier while the
    accountant still reports the epsilon calibrated for the policy (a DP bug). Never set in production; when set,
    it is recorded in the audit's evidence."""

    noise_multiplier_override: float | None = None


@policy_asset(group_name="evaluation", pool="gpu", kinds={"pytorch", "json"})
def privacy_audit(
    context: AssetExecutionContext,
    config: AuditFaultInjection,
    dp_model: dict,
    training_features: pd.DataFrame,
    policy: PolicyResource,
    ledger: LedgerResource,
    paths: WorkspacePaths,
    mlflow: MlflowResource,
    asset_store: AssetStore,
) -> dict:
    """One-run empirical epsilon audit (Steinke, Nasr & Jagielski 2023): canaries included with probability 1/2
    in a DP training run with the deployed configuration, a 95% lower bound on epsilon from how well they are
    recognised. With ``evaluation.gradient_canaries`` also the white-box audit (gradient canaries in the DP-SGD
    steps, every update observed, plus checks of the noise and sampling against the claim). Both audit runs train
    on real records, so each is charged to the lifetime ledger like any other run."""
    loaded = policy.load()
    canaries = loaded.policy.evaluation.audit_canaries
    gradient_canaries = loaded.policy.evaluation.gradient_canaries
    if canaries == 0 and gradient_canaries == 0:
        reason = "evaluation.audit_canaries and evaluation.gradient_canaries are 0"
        context.add_output_metadata({"skipped": True, "reason": reason})
        return {"skipped": True}
    splits = feature_splits(training_features)
    training = selected_training_config(loaded, dp_model)
    audited = dp_config(loaded, splits["train"].n)
    if config.noise_multiplier_override is not None:
        context.log.warning(f"FAULT INJECTION: audit run uses noise multiplier {config.noise_multiplier_override}")
        audited = dataclasses.replace(audited, noise_multiplier_override=config.noise_multiplier_override)
    scope = data_scope(loaded, context.partition_key, splits["train"])
    store = open_ledger(ledger.url, loaded)

    def accountable_train(split: TabularSplit, audit_config, dp):  # type: ignore[no-untyped-def]
        held_out = TabularSplit(split.X[:256], split.y[:256], split.feature_names, n_classes=split.n_classes)
        return train_within_budget(
            split,
            held_out,
            [audit_config],
            dp,
            ledger=store,
            scope=scope,
            lifetime_epsilon=loaded.policy.privacy.lifetime_epsilon_budget,
            checkpoint_dir=paths.checkpoints_dir / loaded.policy.name / "audit",
            tracker=None,
            dagster_run_id=context.run.run_id,
        ).model

    # Under fault injection the ledger would (rightly) refuse a run whose real epsilon is unbounded, so the
    # simulated bug trains outside it, as a buggy pipeline would; the evidence records that it was injected.
    train_fn = train_dp if config.noise_multiplier_override is not None else accountable_train
    lifetime = LifetimeBudget(loaded.policy.privacy.lifetime_epsilon_budget, audited.target_delta)
    audit: dict = {"fault_injection": config.noise_multiplier_override}
    try:
        if canaries:
            result = run_one_run_audit(
                splits["train"],
                training,
                audited,
                settings=AuditSettings(n_canaries=canaries, seed=loaded.policy.training.seed),
                train_fn=train_fn,
            )
            audit |= result.to_dict()
        if gradient_canaries:
            ledger_in = (store, scope, lifetime)
            audit["whitebox"] = _whitebox_audit(context, loaded, training_features, training, ledger_in, asset_store)
    finally:
        store.close()
    audit["mlflow_run_id"] = _log_audit_run(context, mlflow, loaded, dp_model, audit)
    context.add_output_metadata({**_audit_metadata(audit), "mlflow_run": mlflow_run_url(audit["mlflow_run_id"])})
    return audit


def _whitebox_audit(
    context: AssetExecutionContext,
    loaded,  # type: ignore[no-untyped-def]
    training_features: pd.DataFrame,
    training,  # type: ignore[no-untyped-def]
    ledger_in: tuple[PrivacyLedger, DataScope, LifetimeBudget],
    asset_store: AssetStore,
) -> dict:
    """Record unit: gradient canaries in ``train_dp``, charged like a record-level run. Subject unit: the
    user-level trainer audited with one-record canary subjects, reserved through the per-subject filter for
    exactly the people in the audit run (ppml.evaluation.subject_audit)."""
    from ppml.evaluation.subject_audit import audit_subjects_within_budget
    from ppml_assets.subjects import is_subject_unit, lifetime_for_subjects, training_pseudonyms

    splits = feature_splits(training_features)
    privacy, seed = loaded.policy.privacy, loaded.policy.training.seed
    settings = WhiteBoxSettings(n_canaries=loaded.policy.evaluation.gradient_canaries, seed=seed)
    store, scope, lifetime = ledger_in
    if not is_subject_unit(loaded):
        dp = dp_config(loaded, splits["train"].n)
        charged = ChargedAuditTraining(store, scope, lifetime, context.run.run_id)
        return run_whitebox_audit(splits["train"], training, dp, settings=settings, train_fn=charged).to_dict()
    partition = context.partition_key
    pseudonyms = training_pseudonyms(asset_store, partition, loaded, training_features)
    people = len(set(pseudonyms.tolist()))
    result, charge = audit_subjects_within_budget(
        splits["train"],
        pseudonyms,
        training,
        dp_config(loaded, people),  # per person: delta from the number of subjects
        settings,
        ledger=store,
        scope=scope,
        lifetime=lifetime_for_subjects(loaded, people),
        min_eligible=privacy.min_eligible_subjects,
        record_unit_group_size=privacy.max_records_per_subject,
        request_key=f"privacy_audit:{partition}:{context.run.run_id}",
        dagster_run_id=context.run.run_id,
    )
    return {**result.to_dict(), "subject_ledger": charge}


def _log_audit_run(context: AssetExecutionContext, mlflow: MlflowResource, loaded, dp_model: dict, audit: dict) -> str:  # type: ignore[no-untyped-def]
    """The audit as its own MLflow run beside the training's runs, with the training's lineage tags."""
    from ppml_assets.training import _features_hash, lineage_tags

    tags = {**lineage_tags(context, loaded, _features_hash(context)), "ppml.audited_run_id": dp_model["mlflow_run_id"]}
    return log_audit_run(
        mlflow.client(), mlflow.configure(), audit, parent_run_id=dp_model.get("mlflow_parent_run_id"), tags=tags
    )


def _audit_metadata(audit: dict) -> dict:
    metadata: dict = {}
    if "epsilon_lower_bound" in audit:
        metadata |= {
            "epsilon_lower_bound": round(audit["epsilon_lower_bound"], 4),
            "claimed_epsilon": round(audit["claimed_epsilon"], 4),
            "alarm": bool(audit["alarm"]),
            "canaries": audit["canaries"],
        }
    if "whitebox" in audit:
        whitebox = audit["whitebox"]
        metadata |= {
            "whitebox_epsilon_lower_bound": round(whitebox["epsilon_lower_bound"], 4),
            "whitebox_max_achievable_bound": round(whitebox["max_achievable_bound"], 4),
            "whitebox_alarm": bool(whitebox["alarm"]),
            "whitebox_mechanism_checks": MetadataValue.json(whitebox["mechanism_checks"]),
        }
    return metadata
