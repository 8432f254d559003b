"""Accountable training: model selection on the validation split, every candidate charged to the lifetime ledger.

:func:`train_within_budget` runs four steps, which the Dagster asset calls one by one (plan, reserve, train,
charge):

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

import logging
import math
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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
from ppml.ledger.spend import LedgerSpendSink
from ppml.training.checkpoint import checkpoint_path, load_checkpoint
from ppml.training.config import DPConfig, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import train_dp
from ppml.training.planning import (
    CandidateBudget,
    SelectionMetric,
    SelectionPlan,
    mean_prediction_noise,
    plan_selection,
    validate_request,
)
from ppml.training.progress import report_epoch
from ppml.training.selection import CandidateResult, balanced_at_mean_prediction, select_best, validation_scores
from ppml.training.selection_tracking import (
    TAG_WINDOW,
    close_candidate_runs,
    close_selection_run,
    open_selection_run,
    window_tag,
)
from ppml.training.trained_model import TrainedModel

if TYPE_CHECKING:
    from ppml.tracking import TrainingTracker

log = logging.getLogger(__name__)


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

    ``dp`` is the policy's per-model target. ``candidate_budget`` (see :func:`ppml.training.planning.
    candidate_dp_configs`): ``"each"`` trains every candidate at that target (the selection's composition is
    reported separately); ``"split"`` gives each of k candidates (eps/k, delta/k); ``"composed"`` calibrates all
    candidates jointly so that the ledger's composition of the whole selection is at most the target. Either way
    every candidate is reserved and charged. ``lifetime_delta`` defaults to ``dp.target_delta``. With a
    ``tracker`` each candidate is an MLflow run nested under one selection run and the selected model is logged.

    The four steps (:func:`plan_request`, :func:`reserve_request`, :func:`train_candidates`,
    :func:`charge_selection`) can also be called one by one, as the ``dp_model`` asset does.
    """
    request = plan_request(
        train,
        validation,
        candidates,
        dp,
        scope=scope,
        lifetime_epsilon=lifetime_epsilon,
        checkpoint_dir=checkpoint_dir,
        lifetime_delta=lifetime_delta,
        candidate_budget=candidate_budget,
        selection_metric=selection_metric,
        dagster_run_id=dagster_run_id or (tags or {}).get("dagster.run_id"),
        stale_after_s=stale_after_s,
    )
    booking = reserve_request(request, ledger)
    trained = train_candidates(request, booking, ledger, tracker=tracker, tags=tags)
    return charge_selection(request, booking, trained, ledger, tracker=tracker, log_model=log_model)


@dataclass(frozen=True)
class TrainingRequest:
    """A validated, calibrated request: every candidate's plan, known before the ledger is asked."""

    train: TabularSplit
    validation: TabularSplit
    dp: DPConfig
    scope: DataScope
    lifetime: LifetimeBudget
    plan: SelectionPlan
    checkpoint_dir: Path
    dagster_run_id: str | None
    stale_after_s: float


def plan_request(
    train: TabularSplit,
    validation: TabularSplit,
    candidates: Sequence[TrainingConfig],
    dp: DPConfig,
    *,
    scope: DataScope,
    lifetime_epsilon: float,
    checkpoint_dir: Path,
    lifetime_delta: float | None = None,
    candidate_budget: CandidateBudget = "each",
    selection_metric: SelectionMetric = "accuracy",
    dagster_run_id: str | None = None,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
) -> TrainingRequest:
    """Step 1, plan: validate every input and calibrate the candidates (nothing reserved, logged or trained)."""
    candidate_list = validate_request(
        train, validation, candidates, dp, candidate_budget, selection_metric, checkpoint_dir
    )
    lifetime = _lifetime_budget(lifetime_epsilon, lifetime_delta, dp)
    plan = plan_selection(train, validation, candidate_list, dp, candidate_budget, selection_metric, scope)
    return TrainingRequest(
        train, validation, dp, scope, lifetime, plan, Path(checkpoint_dir), dagster_run_id, stale_after_s
    )


def reserve_request(request: TrainingRequest, ledger: PrivacyLedger) -> Booking:
    """Step 2, reserve: every candidate's full plan in one ledger transaction (or take over an unfinished one);
    refused with the spent / requested / limit figures when the lifetime budget would be exceeded."""
    return _book(
        ledger,
        request.scope,
        request.lifetime,
        request.plan,
        request.checkpoint_dir,
        request.dagster_run_id,
        request.stale_after_s,
    )


@dataclass(frozen=True)
class TrainedCandidates:
    """Every candidate trained (and charged per epoch in its ledger row), before one is selected."""

    results: list[CandidateResult]
    parent_run_id: str | None


def train_candidates(
    request: TrainingRequest,
    booking: Booking,
    ledger: PrivacyLedger,
    *,
    tracker: TrainingTracker | None = None,
    tags: Mapping[str, str] | None = None,
) -> TrainedCandidates:
    """Step 3, train: each candidate with DP-SGD, every epoch pre-charged before it runs (a kill over-counts)."""
    run_tags = {k: str(v) for k, v in (tags or {}).items()}
    plan, scope = request.plan, request.scope
    parent_run_id = open_selection_run(tracker, ledger, booking.request_id, scope, plan, request.lifetime, run_tags)
    session = _Session(
        request.train, request.validation, ledger, scope, request.checkpoint_dir, tracker, parent_run_id, run_tags
    )
    return TrainedCandidates(_train_all(session, plan, booking), parent_run_id)


def charge_selection(
    request: TrainingRequest,
    booking: Booking,
    trained: TrainedCandidates,
    ledger: PrivacyLedger,
    *,
    tracker: TrainingTracker | None = None,
    log_model: bool = True,
) -> AccountableTrainingResult:
    """Step 4, charge: select on validation, compose everything the request charged, close the request."""
    plan, scope, lifetime, parent_run_id = request.plan, request.scope, request.lifetime, trained.parent_run_id
    selected = select_best(trained.results, plan.metric)
    including = _selection_spend(ledger, scope, booking.request_id, plan)
    model_uri = close_candidate_runs(tracker, trained.results, selected, including, log_model)
    ledger.finish_request(booking.request_id, selected_run_id=selected.ledger_run_id)
    spent = ledger.spent(scope, lifetime.delta)
    close_selection_run(tracker, parent_run_id, selected, including, spent, lifetime)
    return AccountableTrainingResult(
        model=selected.model,
        selected_index=selected.index,
        candidates=trained.results,
        request_id=booking.request_id,
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
        resumed=booking.resumed,
        notes=[*booking.notes, *_selection_notes(plan, request.dp, including)],
    )


# --------------------------------------------------------------------------------------------------- planning


def _lifetime_budget(lifetime_epsilon: float, lifetime_delta: float | None, dp: DPConfig) -> LifetimeBudget:
    lifetime = LifetimeBudget(float(lifetime_epsilon), float(lifetime_delta or dp.target_delta))
    if lifetime.delta < dp.target_delta:
        raise input_error(
            "policy",
            "lifetime_delta",
            f"{lifetime.delta:g} is below the per-run delta {dp.target_delta:g}",
            "set lifetime_delta >= target_delta",
        )
    return lifetime


# ----------------------------------------------------------------------------------------------------- budget


@dataclass
class Booking:
    """The ledger's side of a request: its id, one ledger run per candidate, and whether it was taken over."""

    request_id: str
    run_ids: dict[int, str]
    resumed: bool
    notes: list[str]


def _book(
    ledger: PrivacyLedger,
    scope: DataScope,
    lifetime: LifetimeBudget,
    plan: SelectionPlan,
    checkpoint_dir: Path,
    dagster_run_id: str | None,
    stale_after_s: float,
) -> Booking:
    """Reserve every candidate's full plan in one transaction, or take over an unfinished identical request."""
    open_request = ledger.open_request(scope.dataset, plan.request_key)
    if open_request is None:
        reservation = ledger.reserve(
            scope, plan.planned, lifetime, request_key=plan.request_key, dagster_run_id=dagster_run_id
        )
        booking = Booking(reservation.request_id, dict(enumerate(reservation.run_ids)), False, [])
    else:
        request_id, existing = open_request
        resume, replace = _resume_or_replace(request_id, existing, plan.planned, checkpoint_dir)
        reservation = ledger.take_over(
            request_id,
            scope,
            lifetime,
            resume=resume,
            replace=replace,
            dagster_run_id=dagster_run_id,
            stale_after_s=stale_after_s,
        )
        current = _current_runs([r for r in ledger.runs(scope.dataset) if r.request_id == request_id])
        note = (
            f"resumed request {request_id}: {len(resume)} run(s) from checkpoints, {len(replace)} "
            "restarted (their earlier charges stay in the ledger)"
        )
        booking = Booking(request_id, {r.candidate_index: r.id for r in current.values()}, True, [note])
    log.info(
        "ledger %s: spent %.4g, requested %.4g, projected %.4g of %.4g",
        booking.request_id,
        reservation.spent_before.epsilon,
        reservation.requested.epsilon,
        reservation.projected.epsilon,
        lifetime.epsilon,
    )
    return booking


def _resume_or_replace(
    request_id: str, existing: Sequence[LedgerRun], planned: Sequence[PlannedRun], checkpoint_dir: Path
) -> tuple[list[str], dict[str, PlannedRun]]:
    """Runs with a checkpoint resume in their own row; runs without one are replaced (their charge stays)."""
    current = _current_runs(existing)
    resume: list[str] = []
    replace: dict[str, PlannedRun] = {}
    for index, planned_run in enumerate(planned):
        run = current.get(index)
        if run is None:
            raise PPMLError(
                f"ledger: field 'candidate_index': request {request_id} has no run for candidate "
                f"{index}; fix: start a new request (change the configuration)"
            )
        if run.status == "completed":
            if not _finished_checkpoint(checkpoint_dir, run.id):
                replace[run.id] = planned_run  # its checkpoint is gone: retrain (its charge stays in the ledger)
        elif checkpoint_path(checkpoint_dir / run.id).exists():
            resume.append(run.id)
        else:
            replace[run.id] = planned_run
    return resume, replace


def _selection_spend(ledger: PrivacyLedger, scope: DataScope, request_id: str, plan: SelectionPlan) -> Composition:
    """The composition of everything the request charged (abandoned rows included): the selection's epsilon.

    Composed at the target delta when the candidates were calibrated jointly for it, else at the sum of the
    runs' deltas (``each``: k delta; ``split``: delta).
    """
    charges = [c for r in ledger.runs(scope.dataset) if r.request_id == request_id and (c := r.charge())]
    delta = plan.target_delta if plan.budget == "composed" else math.fsum(c.delta for c in charges)
    return compose(charges, delta=delta)


def _selection_notes(plan: SelectionPlan, dp: DPConfig, including: Composition) -> list[str]:
    count = len(plan.candidates)
    if count < 2:
        return []
    if plan.budget == "each":
        return [
            f"{count} candidates were trained at epsilon {dp.target_epsilon:g} each; the released model's epsilon "
            f"including selection is {including.epsilon:.4g} at delta {including.delta:g}"
        ]
    return [
        f"{count} candidates were trained at epsilon {plan.dps[0].target_epsilon:.4g} each ({plan.budget}); the "
        f"released model's epsilon including selection is {including.epsilon:.4g} at delta {including.delta:g} "
        f"(target {dp.target_epsilon:g})"
    ]


# --------------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class _Session:
    """What every candidate's training shares: the data, the ledger scope, checkpoints and tracking."""

    train: TabularSplit
    validation: TabularSplit
    ledger: PrivacyLedger
    scope: DataScope
    checkpoint_dir: Path
    tracker: TrainingTracker | None
    parent_run_id: str | None
    tags: Mapping[str, str]


def _train_all(session: _Session, plan: SelectionPlan, booking: Booking) -> list[CandidateResult]:
    """Train the candidates in order; a failure marks the request failed (every charge stays) and re-raises."""
    results: list[CandidateResult] = []
    try:
        for index, (config, c_dp) in enumerate(zip(plan.candidates, plan.dps, strict=True)):
            results.append(_train_candidate(session, index, config, c_dp, booking.run_ids[index]))
        if plan.mean_prediction is not None:
            run_id = booking.run_ids[len(plan.candidates)]
            means = _noisy_mean_predictions(session, results, run_id, plan.dps[0].dp_seed)
            pairs = zip(results, means, strict=True)
            results = [balanced_at_mean_prediction(r, mean, session.validation) for r, mean in pairs]
    except BaseException as error:
        session.ledger.finish_request(
            booking.request_id,
            selected_run_id=None,
            status="failed",
            message=f"{type(error).__name__}: {error}"[:2000],
        )
        if session.tracker is not None and session.parent_run_id:
            session.tracker.end_run(session.parent_run_id, "FAILED")
        raise
    return results


def _train_candidate(
    session: _Session, index: int, config: TrainingConfig, dp: DPConfig, run_id: str
) -> CandidateResult:
    """One candidate in its own ledger row and MLflow run: pre-charged per epoch, completed or failed."""
    ledger, tracker = session.ledger, session.tracker
    ledger_run = ledger.run(run_id)
    mlflow_run_id = _open_candidate_run(session, index, config, run_id, ledger_run.mlflow_run_id)
    run_for_epochs = mlflow_run_id if tracker is not None else None

    def on_epoch(report: Any) -> None:
        if tracker is not None and run_for_epochs:
            tracker.log_epoch(run_for_epochs, report)
        report_epoch(index, report.epoch, config.epochs, report.epsilon, report.validation_accuracy)

    checkpoints = session.checkpoint_dir / run_id
    if ledger_run.status == "completed":
        model = train_dp(session.train, config, dp, validation=session.validation, checkpoint_dir=checkpoints)
    else:
        try:
            model = train_dp(
                session.train,
                config,
                dp,
                validation=session.validation,
                checkpoint_dir=checkpoints,
                on_epoch=on_epoch,
                spend_sink=LedgerSpendSink(ledger, run_id),
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
    scores = validation_scores(model, session.validation)
    return CandidateResult(
        index,
        config,
        dp,
        run_id,
        mlflow_run_id,
        model,
        scores["accuracy"],
        scores["auc"],
        model.resumed_from_step,
        scores["balanced_accuracy"],
    )


def _noisy_mean_predictions(
    session: _Session, results: list[CandidateResult], run_id: str, seed: int | None
) -> list[Any]:
    """The Gaussian mechanism on each candidate's sum of training predictions (reserved before training)."""
    rng = np.random.default_rng(seed if seed is not None else secrets.randbits(63))
    noise_std = mean_prediction_noise(session.train.n)
    if session.train.n_classes > 2:
        # K class sums per candidate: one record's vector of class probabilities has L2 norm <= 1, so the
        # sensitivity (and the reserved charge) is that of the binary single sum.
        class_sums = [r.model.predict_proba(session.train.X).sum(axis=0) for r in results]
        noisy_sums = [total + rng.normal(0.0, noise_std, size=total.shape) for total in class_sums]
        charge = session.ledger.run(run_id)
        session.ledger.complete_run(run_id, steps=1, epsilon=float(charge.epsilon_planned or math.inf))
        return [np.clip(value / session.train.n, 0.01, 0.99) for value in noisy_sums]
    sums = [float(r.model.predict_proba(session.train.X).sum()) for r in results]
    noisy = [total + float(rng.normal(0.0, noise_std)) for total in sums]
    charge = session.ledger.run(run_id)
    session.ledger.complete_run(run_id, steps=1, epsilon=float(charge.epsilon_planned or math.inf))
    return [min(max(value / session.train.n, 0.01), 0.99) for value in noisy]


# --------------------------------------------------------------------------------------------------- internals


def _open_candidate_run(
    session: _Session, index: int, config: TrainingConfig, run_id: str, existing_mlflow_run: str | None
) -> str | None:
    if session.tracker is None:
        return None
    mlflow_run_id = session.tracker.start_run(
        f"dp-candidate-{index}-{config.model.describe()}",
        parent_run_id=session.parent_run_id,
        run_id=existing_mlflow_run,
        tags={
            **session.tags,
            "ppml.role": "candidate",
            "ppml.candidate_index": str(index),
            "ppml.private": "true",
            "ppml.ledger_run_id": run_id,
            TAG_WINDOW: window_tag(session.scope.partitions),
        },
    )
    session.ledger.set_mlflow_run(run_id, mlflow_run_id)
    return mlflow_run_id


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


# Moved to ppml.training.non_private (the non-private reference); still importable from here for this session's
# other branches.
from ppml.training.non_private import BaselineResult, train_baseline  # noqa: E402

__all__ = [
    "AccountableTrainingResult",
    "BaselineResult",
    "Booking",
    "CandidateResult",
    "TrainedCandidates",
    "TrainingRequest",
    "charge_selection",
    "plan_request",
    "reserve_request",
    "train_baseline",
    "train_candidates",
    "train_within_budget",
]
