"""Accountable training: model selection on the validation split, every candidate charged to the lifetime ledger.

This is the one call the Dagster asset makes (:func:`train_within_budget`). In order:

1. validate every input (nothing is reserved, logged or trained on bad input);
2. calibrate each candidate's noise (Opacus) and **reserve** all candidates' full spend in the ledger in one
   transaction -- or fail with the spent / requested / limit figures when the lifetime budget would be exceeded;
3. train each candidate with DP-SGD, **pre-charging** every epoch in the ledger before it runs and checkpointing
   after it, so a killed run is never under-counted and a re-materialization resumes it (same ledger row, same
   MLflow run, same randomness) instead of paying twice;
4. select the candidate with the best validation metric (never the test split) and log it to MLflow with its
   signature; every candidate stays charged: hyper-parameter tuning spends privacy too.

Validation records are used only to *choose* among DP models; the choice is not differentially private with
respect to the validation records (it leaks at most log2(#candidates) bits about them), which is why the ledger
scope should cover the validation partition as well and why few candidates are preferable (docs/training.md).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ppml.errors import PPMLError, input_error
from ppml.ledger import (
    DEFAULT_STALE_AFTER_S,
    Composition,
    DataScope,
    LedgerRun,
    LifetimeBudget,
    PlannedRun,
    PrivacyLedger,
    compose,
)
from ppml.training.checkpoint import checkpoint_path, load_checkpoint
from ppml.training.config import DPConfig, TrainingConfig, fingerprint
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import DPPlan, TrainedModel, plan_dp_training, train_dp, train_non_private

if TYPE_CHECKING:
    from ppml.tracking import TrainingTracker

log = logging.getLogger(__name__)

CandidateBudget = Literal["each", "split"]
SelectionMetric = Literal["accuracy", "auc"]


@dataclass
class CandidateResult:
    """One trained candidate configuration."""

    index: int
    config: TrainingConfig
    dp: DPConfig
    ledger_run_id: str
    mlflow_run_id: str | None
    model: TrainedModel
    validation_accuracy: float | None
    validation_auc: float | None
    resumed_from_step: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "model": self.config.model.describe(),
            "ledger_run_id": self.ledger_run_id,
            "mlflow_run_id": self.mlflow_run_id,
            "epsilon": self.model.epsilon,
            "delta": self.model.delta,
            "noise_multiplier": self.model.noise_multiplier,
            "sample_rate": self.model.sample_rate,
            "steps": self.model.steps,
            "validation_accuracy": self.validation_accuracy,
            "validation_auc": self.validation_auc,
            "resumed_from_step": self.resumed_from_step,
            "config": self.config.to_params(),
        }


@dataclass
class AccountableTrainingResult:
    """The selected DP model and the privacy bookkeeping around it."""

    model: TrainedModel
    selected_index: int
    candidates: list[CandidateResult]
    request_id: str
    ledger_run_id: str
    mlflow_run_id: str | None
    mlflow_parent_run_id: str | None
    model_uri: str | None
    epsilon: float
    delta: float
    epsilon_including_selection: float
    delta_including_selection: float
    lifetime_spent: Composition
    lifetime_limit: LifetimeBudget
    resumed: bool
    notes: list[str] = field(default_factory=list)

    @property
    def lifetime_remaining(self) -> float:
        return max(self.lifetime_limit.epsilon - self.lifetime_spent.epsilon, 0.0)

    def to_metadata(self) -> dict[str, Any]:
        """JSON-able summary for Dagster metadata and reports (aggregates only)."""
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "epsilon_including_selection": self.epsilon_including_selection,
            "delta_including_selection": self.delta_including_selection,
            "candidates": [c.to_dict() for c in self.candidates],
            "selected_index": self.selected_index,
            "ledger_request_id": self.request_id,
            "ledger_run_id": self.ledger_run_id,
            "mlflow_run_id": self.mlflow_run_id,
            "mlflow_parent_run_id": self.mlflow_parent_run_id,
            "model_uri": self.model_uri,
            "lifetime_spent": self.lifetime_spent.to_dict(),
            "lifetime_limit_epsilon": self.lifetime_limit.epsilon,
            "lifetime_limit_delta": self.lifetime_limit.delta,
            "lifetime_remaining_epsilon": self.lifetime_remaining,
            "resumed": self.resumed,
            "notes": self.notes,
        }


@dataclass
class BaselineResult:
    """The non-private reference model (never deployed)."""

    model: TrainedModel
    ledger_run_id: str | None
    mlflow_run_id: str | None


class _LedgerSpendSink:
    """Connects train_dp's spend reports to the ledger (pre-charge before steps, progress after)."""

    def __init__(self, ledger: PrivacyLedger, run_id: str) -> None:
        self.ledger, self.run_id = ledger, run_id

    def before_steps(self, *, steps: int, epsilon: float) -> None:
        self.ledger.pre_charge(self.run_id, steps=steps, epsilon=epsilon)

    def after_steps(self, *, steps: int, epsilon: float) -> None:
        self.ledger.record_progress(self.run_id, steps=steps, epsilon=epsilon)


def train_within_budget(
    train: TabularSplit,
    validation: TabularSplit,
    candidates: Sequence[TrainingConfig],
    dp: DPConfig,
    *,
    ledger: PrivacyLedger,
    scope: DataScope,
    lifetime_epsilon: float,
    checkpoint_dir: Path,
    tracker: TrainingTracker | None = None,
    tags: Mapping[str, str] | None = None,
    lifetime_delta: float | None = None,
    candidate_budget: CandidateBudget = "each",
    selection_metric: SelectionMetric = "accuracy",
    dagster_run_id: str | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    log_model: bool = True,
) -> AccountableTrainingResult:
    """Select and train a DP model among ``candidates`` without ever overspending the lifetime budget.

    ``dp`` is the policy's per-model target. ``candidate_budget="each"`` trains every candidate at that target
    (the ledger charges all of them; the selected model's epsilon *including selection* is reported separately);
    ``"split"`` divides (epsilon, delta) evenly among the candidates so that the released model's total, selection
    included, stays within the target by basic composition. ``lifetime_delta`` defaults to ``dp.target_delta``.
    A ``tracker`` (:class:`ppml.tracking.TrainingTracker`) is optional; with it each candidate is an MLflow run
    nested under one selection run and the selected model is logged (URI in the result).
    """
    candidate_list = _validate(train, validation, candidates, dp, candidate_budget, selection_metric, checkpoint_dir)
    lifetime = LifetimeBudget(float(lifetime_epsilon), float(lifetime_delta or dp.target_delta))
    if lifetime.delta < dp.target_delta:
        raise input_error(
            "policy",
            "lifetime_delta",
            f"{lifetime.delta:g} is below the per-run delta {dp.target_delta:g}",
            "set lifetime_delta >= target_delta",
        )
    dagster_run_id = dagster_run_id or (tags or {}).get("dagster.run_id")
    candidate_dp = _candidate_dp(dp, len(candidate_list), candidate_budget)
    plans = [plan_dp_training(train.n, config, candidate_dp) for config in candidate_list]
    planned = [
        _planned_run(i, train, config, candidate_dp, plan)
        for i, (config, plan) in enumerate(zip(candidate_list, plans, strict=True))
    ]
    request_key = fingerprint(
        "request",
        scope,
        train.record_set_hash(),
        validation.record_set_hash(),
        candidate_list,
        candidate_dp,
        candidate_budget,
        selection_metric,
    )
    checkpoint_dir = Path(checkpoint_dir)

    resumed = False
    notes: list[str] = []
    open_request = ledger.open_request(scope.dataset, request_key)
    if open_request is not None:
        request_id, existing = open_request
        current = _current_runs(existing)
        resume, replace = [], {}
        for index, plan in enumerate(planned):
            run = current.get(index)
            if run is None:
                raise PPMLError(
                    f"ledger: field 'candidate_index': request {request_id} has no run for candidate "
                    f"{index}; fix: start a new request (change the configuration)"
                )
            if run.status == "completed":
                if not _finished_checkpoint(checkpoint_dir, run.id):
                    replace[run.id] = plan  # its checkpoint is gone: retrain (its charge stays in the ledger)
            elif checkpoint_path(checkpoint_dir / run.id).exists():
                resume.append(run.id)
            else:
                replace[run.id] = plan
        reservation = ledger.take_over(
            request_id,
            scope,
            lifetime,
            resume=resume,
            replace=replace,
            dagster_run_id=dagster_run_id,
            stale_after_s=stale_after_s,
        )
        resumed = True
        notes.append(
            f"resumed request {request_id}: {len(resume)} run(s) from checkpoints, {len(replace)} "
            "restarted (their earlier charges stay in the ledger)"
        )
        run_ids = {
            r.candidate_index: r.id
            for r in _current_runs([r for r in ledger.runs(scope.dataset) if r.request_id == request_id]).values()
        }
    else:
        reservation = ledger.reserve(scope, planned, lifetime, request_key=request_key, dagster_run_id=dagster_run_id)
        request_id = reservation.request_id
        run_ids = dict(enumerate(reservation.run_ids))
    log.info(
        "ledger %s: spent %.4g, requested %.4g, projected %.4g of %.4g",
        request_id,
        reservation.spent_before.epsilon,
        reservation.requested.epsilon,
        reservation.projected.epsilon,
        lifetime.epsilon,
    )

    run_tags = {k: str(v) for k, v in (tags or {}).items()}
    parent_run_id = None
    if tracker is not None:
        parent_run_id = tracker.start_run(
            f"dp-selection-{scope.dataset}",
            run_id=ledger.request_mlflow_run(request_id),
            tags={
                **run_tags,
                "ppml.role": "selection",
                "ppml.ledger_request_id": request_id,
                "ppml.private": "true",
                "ppml.partitions": ",".join(scope.partitions),
            },
        )
        ledger.set_request_mlflow_run(request_id, parent_run_id)
        tracker.log_params(
            parent_run_id,
            {
                "candidates": len(candidate_list),
                "candidate_budget": candidate_budget,
                "selection_metric": selection_metric,
                "lifetime_epsilon": lifetime.epsilon,
                "lifetime_delta": lifetime.delta,
            },
        )

    results: list[CandidateResult] = []
    try:
        for index, config in enumerate(candidate_list):
            results.append(
                _train_candidate(
                    index,
                    config,
                    candidate_dp,
                    train,
                    validation,
                    ledger,
                    run_ids[index],
                    checkpoint_dir,
                    tracker,
                    parent_run_id,
                    run_tags,
                    scope,
                )
            )
    except BaseException as error:
        ledger.finish_request(
            request_id, selected_run_id=None, status="failed", message=f"{type(error).__name__}: {error}"[:2000]
        )
        if tracker is not None and parent_run_id:
            tracker.end_run(parent_run_id, "FAILED")
        raise

    selected = _select(results, selection_metric)
    charges = [c for r in ledger.runs(scope.dataset) if r.request_id == request_id and (c := r.charge())]
    including = compose(charges, delta=math.fsum(c.delta for c in charges))
    model_uri = None
    if tracker is not None:
        for result in results:
            tracker.set_tags(result.mlflow_run_id, {"ppml.selected": str(result is selected).lower()})
        if log_model:
            model_uri = tracker.log_model(selected.mlflow_run_id, selected.model)
        tracker.log_metrics(
            selected.mlflow_run_id,
            {"epsilon_including_selection": including.epsilon, "delta_including_selection": including.delta},
        )
        for result in results:
            tracker.end_run(result.mlflow_run_id)
    ledger.finish_request(request_id, selected_run_id=selected.ledger_run_id)
    spent = ledger.spent(scope, lifetime.delta)
    if tracker is not None:
        tracker.log_metrics(
            parent_run_id,
            {
                "selected_index": selected.index,
                "epsilon": selected.model.epsilon,
                "epsilon_including_selection": including.epsilon,
                "lifetime_spent_epsilon": spent.epsilon,
                "lifetime_remaining_epsilon": max(lifetime.epsilon - spent.epsilon, 0.0),
            },
        )
        tracker.set_tags(parent_run_id, {"ppml.selected_mlflow_run_id": selected.mlflow_run_id})
        tracker.end_run(parent_run_id)
    if len(results) > 1 and candidate_budget == "each":
        notes.append(
            f"{len(results)} candidates were trained at epsilon {dp.target_epsilon:g} each; the released "
            f"model's epsilon including selection is {including.epsilon:.4g} at delta {including.delta:g}"
        )
    return AccountableTrainingResult(
        model=selected.model,
        selected_index=selected.index,
        candidates=results,
        request_id=request_id,
        ledger_run_id=selected.ledger_run_id,
        mlflow_run_id=selected.mlflow_run_id,
        mlflow_parent_run_id=parent_run_id,
        model_uri=model_uri,
        epsilon=float(selected.model.epsilon or 0.0),
        delta=float(selected.model.delta or 0.0),
        epsilon_including_selection=including.epsilon,
        delta_including_selection=including.delta,
        lifetime_spent=spent,
        lifetime_limit=lifetime,
        resumed=resumed,
        notes=notes,
    )


def train_baseline(
    train: TabularSplit,
    config: TrainingConfig,
    *,
    validation: TabularSplit | None = None,
    ledger: PrivacyLedger | None = None,
    scope: DataScope | None = None,
    tracker: TrainingTracker | None = None,
    tags: Mapping[str, str] | None = None,
    dagster_run_id: str | None = None,
) -> BaselineResult:
    """The non-private model on the same features, for the utility gap and the privacy audit.

    Call it only when the policy allows a baseline. It has no DP guarantee: it is logged as its own MLflow run
    tagged ``never-deploy`` (parameters and metrics only, no weights), recorded in the ledger as a non-private
    run outside DP composition, and its model must never leave the trusted boundary.
    """
    model = train_non_private(train, config, validation=validation)
    mlflow_run_id = None
    if tracker is not None:
        mlflow_run_id = tracker.start_run(
            "non-private-baseline", tags={**{k: str(v) for k, v in (tags or {}).items()}, **tracker.baseline_tags()}
        )
        for report in model.history:
            tracker.log_epoch(mlflow_run_id, report)
        tracker.log_training(mlflow_run_id, model)
        tracker.end_run(mlflow_run_id)
    ledger_run_id = None
    if ledger is not None and scope is not None:
        ledger_run_id = ledger.record_non_private(
            scope,
            config=config.to_params(),
            config_fingerprint=fingerprint("baseline", config),
            steps=model.steps,
            mlflow_run_id=mlflow_run_id,
            dagster_run_id=dagster_run_id or (tags or {}).get("dagster.run_id"),
        )
    return BaselineResult(model, ledger_run_id, mlflow_run_id)


# --------------------------------------------------------------------------------------------------- internals


def _train_candidate(
    index: int,
    config: TrainingConfig,
    dp: DPConfig,
    train: TabularSplit,
    validation: TabularSplit,
    ledger: PrivacyLedger,
    run_id: str,
    checkpoint_dir: Path,
    tracker: TrainingTracker | None,
    parent_run_id: str | None,
    tags: Mapping[str, str],
    scope: DataScope,
) -> CandidateResult:
    ledger_run = ledger.run(run_id)
    mlflow_run_id = None
    on_epoch = None
    if tracker is not None:
        mlflow_run_id = tracker.start_run(
            f"dp-candidate-{index}-{config.model.describe()}",
            parent_run_id=parent_run_id,
            run_id=ledger_run.mlflow_run_id,
            tags={
                **tags,
                "ppml.role": "candidate",
                "ppml.candidate_index": str(index),
                "ppml.private": "true",
                "ppml.ledger_run_id": run_id,
                "ppml.partitions": ",".join(scope.partitions),
            },
        )
        ledger.set_mlflow_run(run_id, mlflow_run_id)
        run_for_epochs = mlflow_run_id

        def on_epoch(report: Any) -> None:
            tracker.log_epoch(run_for_epochs, report)

    if ledger_run.status == "completed":
        model = train_dp(train, config, dp, validation=validation, checkpoint_dir=checkpoint_dir / run_id)
    else:
        try:
            model = train_dp(
                train,
                config,
                dp,
                validation=validation,
                checkpoint_dir=checkpoint_dir / run_id,
                on_epoch=on_epoch,
                spend_sink=_LedgerSpendSink(ledger, run_id),
            )
        except BaseException as error:
            ledger.fail_run(run_id, f"{type(error).__name__}: {error}")
            if tracker is not None and mlflow_run_id:
                tracker.end_run(mlflow_run_id, "FAILED")
            raise
        ledger.complete_run(
            run_id, steps=model.steps, epsilon=float(model.epsilon_charged or 0.0), mlflow_run_id=mlflow_run_id
        )
    if tracker is not None and mlflow_run_id:
        tracker.log_training(mlflow_run_id, model, {"ledger_run_id": run_id})
    last = model.history[-1] if model.history else None
    return CandidateResult(
        index,
        config,
        dp,
        run_id,
        mlflow_run_id,
        model,
        last.validation_accuracy if last else None,
        last.validation_auc if last else None,
        model.resumed_from_step,
    )


def _validate(
    train: TabularSplit,
    validation: TabularSplit | None,
    candidates: Sequence[TrainingConfig],
    dp: DPConfig,
    candidate_budget: str,
    selection_metric: str,
    checkpoint_dir: Path | None,
) -> list[TrainingConfig]:
    if not isinstance(train, TabularSplit):
        raise input_error(
            "train",
            "X",
            f"expected a TabularSplit, got {type(train).__name__}",
            "wrap the features in ppml.training.TabularSplit",
        )
    train.require_trainable()
    dp.check_delta_for(train.n, train.name)
    if validation is None or not isinstance(validation, TabularSplit) or validation.n == 0:
        raise input_error(
            getattr(validation, "name", "validation split"),
            "rows",
            "model selection needs a non-empty validation split",
            "keep a validation share in the policy's split ratios",
        )
    if validation.n_features != train.n_features:
        raise input_error(
            validation.name,
            "X",
            f"{validation.n_features} features, training has {train.n_features}",
            "encode both splits with the same feature pipeline",
        )
    candidate_list = list(candidates)
    if not candidate_list or not all(isinstance(c, TrainingConfig) for c in candidate_list):
        raise input_error(
            "training request",
            "candidates",
            "no candidate configuration",
            "give at least one TrainingConfig (policy: training.candidates)",
        )
    if candidate_budget not in ("each", "split"):
        raise input_error(
            "training request", "candidate_budget", f"unknown mode {candidate_budget!r}", "use 'each' or 'split'"
        )
    if selection_metric not in ("accuracy", "auc"):
        raise input_error(
            "training request", "selection_metric", f"unknown metric {selection_metric!r}", "use 'accuracy' or 'auc'"
        )
    if checkpoint_dir is None:
        raise input_error("training request", "checkpoint_dir", "missing", "pass a folder for checkpoints")
    return candidate_list


def _candidate_dp(dp: DPConfig, count: int, mode: str) -> DPConfig:
    if mode == "each" or count == 1:
        return dp
    return dataclasses.replace(dp, target_epsilon=dp.target_epsilon / count, target_delta=dp.target_delta / count)


def _planned_run(index: int, train: TabularSplit, config: TrainingConfig, dp: DPConfig, plan: DPPlan) -> PlannedRun:
    return PlannedRun(
        candidate_index=index,
        config_fingerprint=fingerprint("dp-run", train.record_set_hash(), config, dp, 1),
        config={**config.to_params(), **dp.to_params()},
        accountant=dp.accountant,
        target_epsilon=dp.target_epsilon,
        target_delta=dp.target_delta,
        noise_multiplier=plan.noise_multiplier,
        noise_multiplier_applied=plan.noise_multiplier_applied,
        sample_rate=plan.sample_rate,
        planned_steps=plan.planned_steps,
        epsilon_planned=plan.epsilon_charged_planned,
    )


def _current_runs(runs: Sequence[LedgerRun]) -> dict[int, LedgerRun]:
    """Per candidate, the newest run that was not abandoned (abandoned rows are history, still charged)."""
    current: dict[int, LedgerRun] = {}
    for run in sorted(runs, key=lambda r: r.created_at):
        if run.status != "abandoned":
            current[run.candidate_index] = run
    return current


def _finished_checkpoint(checkpoint_dir: Path, run_id: str) -> bool:
    stored = load_checkpoint(checkpoint_path(checkpoint_dir / run_id))
    return bool(stored and stored.get("completed"))


def _select(results: list[CandidateResult], metric: str) -> CandidateResult:
    def score(result: CandidateResult) -> tuple[float, float, float]:
        primary = result.validation_accuracy if metric == "accuracy" else result.validation_auc
        secondary = result.validation_auc if metric == "accuracy" else result.validation_accuracy
        return (
            primary if primary is not None else -1.0,
            secondary if secondary is not None else -1.0,
            -(result.model.epsilon or 0.0),
        )

    return max(results, key=score)
