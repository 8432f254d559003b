"""The non-private trainer DP-SGD is compared with: same model, loss, optimizer and batch size, no clipping or
noise (the utility and speed reference), and :func:`train_baseline`, which records such a run in the ledger (outside
DP composition) and MLflow (tagged never-deploy)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ppml.ledger import DataScope, PrivacyLedger
from ppml.training.config import TrainingConfig, fingerprint
from ppml.training.data import TabularSplit, check_training_inputs
from ppml.training.models import build_model, make_optimizer, resolve_device
from ppml.training.trained_model import EpochCallback, EpochReport, TrainedModel, validation_metrics

if TYPE_CHECKING:
    from ppml.tracking import TrainingTracker


def train_non_private(
    train: TabularSplit,
    config: TrainingConfig,
    *,
    validation: TabularSplit | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """Same model, loss, optimizer and batch size without clipping or noise: the utility and speed reference."""
    check_training_inputs(train, validation, None)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, train.n_features, train.n_classes).to(device)
    optimizer = make_optimizer(model.parameters(), config)
    shuffle = torch.Generator().manual_seed(config.seed + 1)
    X = torch.from_numpy(train.X).to(device)
    y = torch.from_numpy(train.y).to(device)
    history: list[EpochReport] = []
    steps = 0
    physical = min(config.batch_size, config.max_physical_batch_size)
    for epoch in range(config.epochs):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(train.n, generator=shuffle).to(device)
        loss_total = torch.zeros((), device=device)
        started = time.perf_counter()
        for start in range(0, train.n, config.batch_size):
            batch = order[start : start + config.batch_size]
            for chunk_start in range(0, len(batch), physical):
                chunk = batch[chunk_start : chunk_start + physical]
                loss = F.cross_entropy(model(X.index_select(0, chunk)), y.index_select(0, chunk), reduction="sum")
                (loss / len(batch)).backward()
                loss_total += loss.detach()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        loss_sum = float(loss_total)
        train_seconds = time.perf_counter() - started
        accuracy, auc = validation_metrics(model, validation, device)
        report = EpochReport(
            epoch=epoch + 1,
            train_loss=loss_sum / train.n,
            epsilon=None,
            validation_accuracy=accuracy,
            seconds=time.perf_counter() - epoch_started,
            steps=steps,
            samples=train.n,
            train_seconds=train_seconds,
            validation_auc=auc,
        )
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
    final = build_model(config.model, train.n_features, train.n_classes)
    final.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    final.eval()
    return TrainedModel(
        module=final,
        config=config,
        dp=None,
        epsilon=None,
        delta=None,
        noise_multiplier=None,
        sample_rate=None,
        steps=steps,
        history=history,
        feature_names=train.feature_names,
        clipping=None,
        device=str(device),
        planned_steps=steps,
    )


@dataclass
class BaselineResult:
    """The non-private reference model (never deployed)."""

    model: TrainedModel
    ledger_run_id: str | None
    mlflow_run_id: str | None


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
