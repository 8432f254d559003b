"""The DP-SGD training loop: logical steps in checkpointed segments, each segment pre-charged to the spend sink
before it runs (a kill -9 then over-counts, never under-counts), per-epoch reports, and checkpoint save/restore
of everything a resumed run needs to continue the same randomness and accountant history."""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader

from ppml.training.accounting import DPPlan, PrivacySpendSink, epsilon_of_history
from ppml.training.book_keeping import BookKeepingClipper
from ppml.training.checkpoint import atomic_write_bytes, load_checkpoint
from ppml.training.config import DPConfig, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_steps import BookKeepingNoisyStep, IndexBatchMemoryManager, StepHook
from ppml.training.sampling import poisson_indices
from ppml.training.trained_model import EpochCallback, EpochReport, validation_metrics


@dataclass
class TrainingState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    train_seconds: float = 0.0
    history: list[EpochReport] = field(default_factory=list)
    completed: bool = False


@dataclass
class LoopContext:
    train: TabularSplit
    validation: TabularSplit | None
    config: TrainingConfig
    dp: DPConfig
    plan: DPPlan
    device: torch.device
    rank: int
    world_size: int
    engine: PrivacyEngine
    dp_module: nn.Module
    base_model: nn.Sequential
    optimizer: Any
    criterion: Any
    loader: DataLoader
    bk: BookKeepingClipper | None
    noisy_step: BookKeepingNoisyStep | None
    clipping: str
    charged: Any
    sampler_generator: torch.Generator
    noise_generator: torch.Generator
    ckpt_file: Path | None
    fingerprint: str
    spend_sink: PrivacySpendSink | None
    on_epoch: EpochCallback | None
    on_step: Callable[[int], None] | None
    checkpoint_every_steps: int | None
    step_hook: StepHook | None = None

    def run(self, state: TrainingState) -> None:
        with warnings.catch_warnings():
            # Opacus' ghost/hooks modes fire this on every first layer (its input needs no gradient): expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self._run(state)

    def _run(self, state: TrainingState) -> None:
        X = torch.from_numpy(self.train.X).to(self.device)
        y = torch.from_numpy(self.train.y).to(self.device)
        # Book-keeping needs ||x_i||^2 of every record it sees: computed once here instead of once per step.
        self._x_sq_norms = torch.linalg.vector_norm(X, dim=1).square_() if self.bk is not None else None
        steps_per_epoch = self.plan.steps_per_epoch
        while state.epoch < self.config.epochs:
            epoch_started = time.perf_counter()
            while state.step_in_epoch < steps_per_epoch:
                segment = steps_per_epoch - state.step_in_epoch
                if self.checkpoint_every_steps:
                    segment = min(segment, self.checkpoint_every_steps)
                self._pre_charge(state.global_step + segment)
                started = time.perf_counter()
                self._run_steps(state, segment, X, y)
                state.train_seconds += time.perf_counter() - started
                if state.step_in_epoch < steps_per_epoch:
                    self._save(state)
                    self._report_spend(state)
            report = self._epoch_report(state, time.perf_counter() - epoch_started)
            state.history.append(report)
            if self.on_epoch is not None:
                self.on_epoch(report)
            state.epoch += 1
            state.step_in_epoch = 0
            state.loss_sum, state.samples, state.train_seconds = 0.0, 0, 0.0
            state.completed = state.epoch >= self.config.epochs
            self._save(state)
            self._report_spend(state)

    def _run_steps(self, state: TrainingState, logical_steps: int, X: torch.Tensor, y: torch.Tensor) -> None:
        sampler = self.loader.batch_sampler
        if isinstance(sampler, DistributedUniformWithReplacementSampler):
            sampler.set_epoch(state.epoch)
            sampler.num_batches = logical_steps
        else:
            sampler.steps = logical_steps
        self.dp_module.train()
        loss_sum = torch.zeros((), device=self.device)
        hook = self.step_hook
        with IndexBatchMemoryManager(
            data_loader=self.loader,
            max_physical_batch_size=self.config.max_physical_batch_size,
            optimizer=self.optimizer,
            draw=poisson_indices if hook is None else hook.draw(poisson_indices),
        ) as physical_batches:
            for indices in physical_batches:
                if hook is not None:
                    indices = hook.batch(indices)
                index = indices.to(self.device)
                features, labels = X.index_select(0, index), y.index_select(0, index)
                x_sq = self._x_sq_norms.index_select(0, index) if self._x_sq_norms is not None else None
                loss_sum += self._physical_step(features, labels, x_sq)
                state.samples += len(indices)
                if not self.optimizer._is_last_step_skipped:
                    state.step_in_epoch += 1
                    state.global_step += 1
                    if self.on_step is not None:
                        self.on_step(state.global_step)
        state.loss_sum += float(loss_sum)

    def _physical_step(
        self, features: torch.Tensor, labels: torch.Tensor, x_sq_norms: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward, clip per example, accumulate; the optimizer adds noise at the end of each logical batch."""
        if self.noisy_step is not None and self.bk is not None:
            logits = self.bk.forward(features, input_sq_norms=x_sq_norms)
            loss_per_example = F.cross_entropy(logits, labels, reduction="none")
            self.bk.backward(loss_per_example, accumulate=self.noisy_step.accumulating)
            self.noisy_step.step()
            return loss_per_example.detach().sum()
        if self.bk is not None:
            logits = self.bk.forward(features, input_sq_norms=x_sq_norms)
            loss_per_example = F.cross_entropy(logits, labels, reduction="none")
            self.bk.backward(loss_per_example)
            loss_sum = loss_per_example.detach().sum()
        elif self.criterion is not None:
            loss = self.criterion(self.dp_module(features), labels)
            loss.backward()
            loss_sum = loss.loss_per_sample.detach().sum()
        else:
            logits = self.dp_module(features)
            loss = F.cross_entropy(logits, labels, reduction="mean") if len(labels) else logits.sum() * 0.0
            loss.backward()
            loss_sum = loss.detach() * len(labels)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def _pre_charge(self, steps_after: int) -> None:
        if self.spend_sink is None:
            return
        upcoming = steps_after - self._steps_in(self.charged)
        future = [*self.charged.history, (self.plan.noise_multiplier_applied, self.plan.sample_rate, upcoming)]
        self.spend_sink.before_steps(
            steps=steps_after, epsilon=epsilon_of_history(future, self.dp.target_delta, self.dp.accountant)
        )

    def _report_spend(self, state: TrainingState) -> None:
        if self.spend_sink is not None:
            self.spend_sink.after_steps(
                steps=state.global_step,
                epsilon=epsilon_of_history(self.charged.history, self.dp.target_delta, self.dp.accountant),
            )

    @staticmethod
    def _steps_in(accountant: Any) -> int:
        return sum(steps for _, _, steps in accountant.history)

    def _epoch_report(self, state: TrainingState, seconds: float) -> EpochReport:
        epsilon = epsilon_of_history(self.engine.accountant.history, self.dp.target_delta, self.dp.accountant)
        accuracy, auc = validation_metrics(self.base_model, self.validation, self.device)
        return EpochReport(
            epoch=state.epoch + 1,
            train_loss=state.loss_sum / max(state.samples, 1),
            epsilon=epsilon,
            validation_accuracy=accuracy,
            seconds=seconds,
            steps=state.global_step,
            samples=state.samples,
            train_seconds=state.train_seconds,
            validation_auc=auc,
        )

    def _save(self, state: TrainingState) -> None:
        if self.ckpt_file is None:
            return
        sampler_states = _gather(self.sampler_generator.get_state(), self.world_size)
        noise_states = _gather(self.noise_generator.get_state().cpu(), self.world_size)
        if self.rank != 0:
            return
        extra = {
            "format": 1,
            "fingerprint": self.fingerprint,
            "epoch": state.epoch,
            "step_in_epoch": state.step_in_epoch,
            "global_step": state.global_step,
            "loss_sum": state.loss_sum,
            "samples": state.samples,
            "train_seconds": state.train_seconds,
            "history": [r.to_dict() for r in state.history],
            "completed": state.completed,
            "sampler_generator_states": sampler_states,
            "noise_generator_states": noise_states,
            "charged_history": list(self.charged.history),
            "noise_multiplier": self.plan.noise_multiplier,
            "sample_rate": self.plan.sample_rate,
        }
        buffer = io.BytesIO()
        self.engine.save_checkpoint(path=buffer, module=self.dp_module, optimizer=self.optimizer, checkpoint_dict=extra)
        atomic_write_bytes(buffer.getvalue(), self.ckpt_file)


def restore_state(
    stored: dict[str, Any],
    engine: PrivacyEngine,
    dp_module: nn.Module,
    optimizer: Any,
    charged: Any,
    sampler_generator: torch.Generator,
    noise_generator: torch.Generator,
    rank: int,
    plan: DPPlan,
) -> TrainingState:
    if not math.isclose(stored["noise_multiplier"], plan.noise_multiplier, rel_tol=1e-12):
        raise RuntimeError("checkpoint noise multiplier differs from the calibration; refusing to resume")
    buffer = io.BytesIO()
    torch.save(stored, buffer)
    buffer.seek(0)
    engine.load_checkpoint(path=buffer, module=dp_module, optimizer=optimizer)
    if charged is not engine.accountant:
        charged.history = [tuple(h) for h in stored["charged_history"]]
    sampler_generator.set_state(stored["sampler_generator_states"][rank])
    noise_generator.set_state(stored["noise_generator_states"][rank])
    return TrainingState(
        epoch=stored["epoch"],
        step_in_epoch=stored["step_in_epoch"],
        global_step=stored["global_step"],
        loss_sum=stored["loss_sum"],
        samples=stored["samples"],
        train_seconds=stored["train_seconds"],
        history=[EpochReport(**r) for r in stored["history"]],
        completed=stored["completed"],
    )


def load_for_rank(path: Path) -> dict[str, Any] | None:
    _, world_size = rank_and_world()
    if world_size > 1:
        torch.distributed.barrier()
    return load_checkpoint(path)


def _gather(value: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
