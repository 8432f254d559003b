"""MLflow side of a selection: one parent run per request, the selected candidate tagged and its model logged."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from ppml.ledger import Composition, DataScope, LifetimeBudget, PrivacyLedger
from ppml.training.planning import SelectionPlan
from ppml.training.selection import CandidateResult

#: The training window of a run as one compact tag, ``first..last (n days)`` (not a list of every date).
TAG_WINDOW = "ppml.window"


def window_tag(partitions: tuple[str, ...] | list[str]) -> str:
    """``2026-02-01..2026-04-30 (90 days)``: the scope's daily partitions are a contiguous, sorted window."""
    if not partitions:
        return "none"
    days = sorted(partitions)
    return f"{days[0]}..{days[-1]} ({len(days)} day{'s' if len(days) != 1 else ''})"


if TYPE_CHECKING:
    from ppml.tracking import TrainingTracker


def open_selection_run(
    tracker: TrainingTracker | None,
    ledger: PrivacyLedger,
    request_id: str,
    scope: DataScope,
    plan: SelectionPlan,
    lifetime: LifetimeBudget,
    tags: Mapping[str, str],
) -> str | None:
    if tracker is None:
        return None
    parent_run_id = tracker.start_run(
        f"dp-selection-{scope.dataset}",
        run_id=ledger.request_mlflow_run(request_id),
        tags={
            **tags,
            "ppml.role": "selection",
            "ppml.ledger_request_id": request_id,
            "ppml.private": "true",
            TAG_WINDOW: window_tag(scope.partitions),
        },
    )
    ledger.set_request_mlflow_run(request_id, parent_run_id)
    tracker.log_params(
        parent_run_id,
        {
            "candidates": len(plan.candidates),
            "candidate_budget": plan.budget,
            "candidate_epsilon": plan.dps[0].target_epsilon,
            "selection_metric": plan.metric,
            "lifetime_epsilon": lifetime.epsilon,
            "lifetime_delta": lifetime.delta,
        },
    )
    return parent_run_id


def close_candidate_runs(
    tracker: TrainingTracker | None,
    results: list[CandidateResult],
    selected: CandidateResult,
    including: Composition,
    log_model: bool,
) -> str | None:
    """Tag the selected candidate, log its model (URI returned) and the selection's epsilon, end every run."""
    if tracker is None:
        return None
    for result in results:
        tracker.set_tags(result.mlflow_run_id, {"ppml.selected": str(result is selected).lower()})
    model_uri = tracker.log_model(selected.mlflow_run_id, selected.model) if log_model else None
    tracker.log_metrics(
        selected.mlflow_run_id,
        {"epsilon_including_selection": including.epsilon, "delta_including_selection": including.delta},
    )
    for result in results:
        tracker.end_run(result.mlflow_run_id)
    return model_uri


def close_selection_run(
    tracker: TrainingTracker | None,
    parent_run_id: str | None,
    selected: CandidateResult,
    including: Composition,
    spent: Composition,
    lifetime: LifetimeBudget,
) -> None:
    if tracker is None or parent_run_id is None:
        return
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
