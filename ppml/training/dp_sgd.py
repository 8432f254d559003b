"""DP-SGD with Opacus, and the non-private trainer it is compared with.

What Opacus does here: the two halves of ``make_private_with_epsilon`` -- ``get_noise_multiplier`` calibrates the
noise for the target (epsilon, delta) and ``make_private`` swaps the loader for Poisson sampling and wraps the
optimizer that adds noise and feeds the accountant (PRV by default, RDP selectable); ``BatchMemoryManager`` splits
large logical batches into physical ones. (The halves are called separately so the calibration made for the
ledger's reservation is the one the run uses; a test checks it equals ``make_private_with_epsilon``'s.)
What this module adds: per-example clipping by book-keeping (one backward pass, see
:mod:`ppml.training.book_keeping`) next to Opacus' ghost and hooks modes; checkpoints that also hold the sampler
and noise generator states, so a resumed run continues the very same randomness and accountant history; and a
:class:`PrivacySpendSink` that is told how many steps *may* run before they run, so a ledger can never
under-count a run that is killed mid-way.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import DistributedUniformWithReplacementSampler, UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ppml.errors import PPMLError, input_error
from ppml.training.book_keeping import BookKeepingClipper
from ppml.training.checkpoint import atomic_write_bytes, checkpoint_path, load_checkpoint
from ppml.training.config import DPConfig, TrainingConfig, fingerprint
from ppml.training.data import TabularSplit
from ppml.training.models import build_model, make_private_compatible, resolve_device, supports_book_keeping
from ppml.training.sampling import poisson_indices

log = logging.getLogger(__name__)

EpochCallback = Callable[["EpochReport"], None]


@dataclass
class EpochReport:
    """One epoch, as logged to MLflow. ``epsilon`` is the cumulative epsilon after this epoch (None if non-private)."""

    epoch: int
    train_loss: float
    epsilon: float | None
    validation_accuracy: float | None
    seconds: float
    steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    validation_auc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedModel:
    """A trained classifier plus the privacy facts the ledger, MLflow and the evaluation engine need."""

    module: nn.Module
    config: TrainingConfig
    dp: DPConfig | None
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    history: list[EpochReport] = field(default_factory=list)
    feature_names: tuple[str, ...] = ()
    clipping: str | None = None
    device: str = "cpu"
    epsilon_charged: float | None = None  # epsilon of the noise actually added (differs only under fault injection)
    planned_steps: int = 0
    resumed_from_step: int | None = None

    @property
    def n_classes(self) -> int:
        return output_width(self.module)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(y = 1) for each row of ``X``, shape (n,); for a multi-class model every class's probability (n, K)."""
        return class_probabilities(self._logits(X))

    def per_example_loss(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Cross-entropy of each example, shape (n,): the signal membership-inference attacks use."""
        logits = self._logits(X)
        target = torch.as_tensor(np.asarray(y), dtype=torch.long)
        return F.cross_entropy(logits, target, reduction="none").numpy().astype(np.float64)

    def evaluate(self, split: TabularSplit) -> dict[str, float]:
        """Accuracy, ROC AUC (NaN with one class) and mean loss on ``split``."""
        return _metrics(self.predict_proba(split.X), split.y, self.per_example_loss(split.X, split.y))

    @property
    def samples_per_second(self) -> float:
        seconds = sum(r.train_seconds for r in self.history)
        return sum(r.samples for r in self.history) / seconds if seconds > 0 else float("nan")

    def _logits(self, X: np.ndarray) -> torch.Tensor:
        features = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
        self.module.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, max(len(features), 1), 65536):
                outputs.append(self.module(features[start : start + 65536]))
        return torch.cat(outputs) if outputs else torch.empty(0, self.n_classes)


def output_width(module: nn.Module) -> int:
    """The number of classes a model scores: the width of its last Linear layer."""
    return int([layer for layer in module.modules() if isinstance(layer, nn.Linear)][-1].out_features)


def class_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax of the logits: P(y = 1) with shape (n,) for two classes (the binary contract), else (n, K)."""
    probabilities = torch.softmax(logits, dim=1)
    if probabilities.shape[1] == 2:
        return probabilities[:, 1].cpu().numpy().astype(np.float64)
    return probabilities.cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class DPPlan:
    """What a DP run will spend, known before it starts: the ledger reserves this before any step runs."""

    n_records: int
    sample_rate: float
    steps_per_epoch: int
    planned_steps: int
    noise_multiplier: float  # calibrated by Opacus for (target_epsilon, target_delta)
    noise_multiplier_applied: float  # what the optimizer adds (the override under fault injection)
    epsilon_planned: float  # accountant epsilon of the calibrated noise after planned_steps
    epsilon_charged_planned: float  # same with the applied noise: what the ledger reserves
    delta: float
    accountant: str
    # The sample rate the claimed epsilon is accounted with; None = the real one (differs only under fault injection)
    accounted_sample_rate: float | None = None

    def history(self, steps: int | None = None) -> list[tuple[float, float, int]]:
        """Accountant history (noise, sample rate, steps) of the applied noise."""
        steps = self.planned_steps if steps is None else steps
        return [(self.noise_multiplier_applied, self.sample_rate, steps)] if steps > 0 else []


class PrivacySpendSink(Protocol):
    """Where a run reports spending. ``before_steps`` must persist durably before returning: it is the pre-charge
    that makes a kill -9 during the following steps over-count rather than under-count."""

    def before_steps(self, *, steps: int, epsilon: float) -> None: ...

    def after_steps(self, *, steps: int, epsilon: float) -> None: ...


class StepHook:
    """Instrumentation of the DP-SGD step: the white-box audit's gradient canaries and the planted-bug corpus
    (:mod:`ppml.evaluation.audit_whitebox`, :mod:`ppml.evaluation.planted_bugs`).

    Only a keyword argument of :func:`train_dp` -- no policy or config field reaches it. Every method's default
    changes nothing. It runs on the single-process book-keeping path (stacks of Linear layers), in this order per
    logical step: ``batch`` for each physical batch's indices, ``before_noise`` on the clipped sum (flat, all
    parameters) with the clipper's own clip-factor function, ``noise_std``, then ``after_noise`` on the noisy sum
    (before division by the expected batch size).
    """

    def plan(self, plan: DPPlan) -> DPPlan:
        return plan

    def draw(self, draw: Callable[[int, float, torch.Generator], torch.Tensor]) -> Callable[..., torch.Tensor]:
        return draw

    def clip_bound(self, bound: float) -> float:
        return bound

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return indices

    def before_noise(self, grads: torch.Tensor, clip_factors: Callable[[torch.Tensor], torch.Tensor]) -> None:
        return None

    def noise_std(self, std: float) -> float:
        return std

    def after_noise(self, grads: torch.Tensor) -> None:
        return None


# --------------------------------------------------------------------------------------------- planning and accounting


@functools.lru_cache(maxsize=256)
def calibrated_noise_multiplier(
    target_epsilon: float, target_delta: float, sample_rate: float, epochs: int, accountant: str
) -> float:
    """Opacus' calibration, with the very arguments ``make_private_with_epsilon`` passes (cached per process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            sample_rate=sample_rate,
            epochs=epochs,
            accountant=accountant,
        )


@functools.lru_cache(maxsize=1024)
def _epsilon_cached(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    acc = create_accountant(mechanism=accountant)
    acc.history = [tuple(h) for h in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def epsilon_of_history(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """Epsilon of an accountant history (merged like Opacus merges consecutive identical steps)."""
    return _epsilon_cached(tuple(_merge_history(history)), float(delta), accountant)


def _merge_history(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    merged: list[tuple[float, float, int]] = []
    for sigma, rate, steps in history:
        if steps <= 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == rate:
            merged[-1] = (sigma, rate, merged[-1][2] + steps)
        else:
            merged.append((float(sigma), float(rate), int(steps)))
    return merged


def plan_dp_training(n_records: int, config: TrainingConfig, dp: DPConfig) -> DPPlan:
    """Calibrate exactly as ``make_private_with_epsilon`` will (same sample rate, epochs and accountant)."""
    batches = math.ceil(n_records / config.batch_size)
    sample_rate = 1 / batches
    steps_per_epoch = int(1 / sample_rate)
    planned = steps_per_epoch * config.epochs
    try:
        sigma = calibrated_noise_multiplier(
            float(dp.target_epsilon), float(dp.target_delta), sample_rate, config.epochs, dp.accountant
        )
    except ValueError as error:
        raise input_error(
            "dp config",
            "target_epsilon",
            f"epsilon {dp.target_epsilon:g} is too small for {config.epochs} epochs at sample rate "
            f"{sample_rate:.3g} ({error})",
            "raise epsilon, or train fewer epochs",
        ) from error
    applied = sigma if dp.noise_multiplier_override is None else float(dp.noise_multiplier_override)
    eps_planned = epsilon_of_history([(sigma, sample_rate, planned)], dp.target_delta, dp.accountant)
    eps_charged = epsilon_of_history([(applied, sample_rate, planned)], dp.target_delta, dp.accountant)
    return DPPlan(
        n_records,
        sample_rate,
        steps_per_epoch,
        planned,
        sigma,
        applied,
        eps_planned,
        eps_charged,
        float(dp.target_delta),
        dp.accountant,
    )


# ------------------------------------------------------------------------------------------------------ DP training


def train_dp(
    train: TabularSplit,
    config: TrainingConfig,
    dp: DPConfig,
    *,
    validation: TabularSplit | None = None,
    checkpoint_dir: Path | None = None,
    on_epoch: EpochCallback | None = None,
    spend_sink: PrivacySpendSink | None = None,
    checkpoint_every_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
    step_hook: StepHook | None = None,
) -> TrainedModel:
    """Train ``config.model`` with DP-SGD to ``dp.target_epsilon`` / ``dp.target_delta``.

    With ``checkpoint_dir`` the run checkpoints after every epoch (and every ``checkpoint_every_steps`` logical
    steps) and, when started again with the same data and configuration, resumes from the last checkpoint with
    model, optimizer, sampler position, noise generator and accountant history restored; a finished checkpoint is
    returned without training again. Under ``torch.distributed`` (torchrun) the model is wrapped in Opacus' DPDDP
    and every rank samples its shard of the data; rank 0 alone adds noise, writes checkpoints and reports spend.
    ``step_hook`` (audit and fault injection only, see :class:`StepHook`) needs single-process book-keeping and
    no checkpoints.
    """
    _check_inputs(train, validation, dp)
    if checkpoint_every_steps is not None and checkpoint_every_steps < 1:
        raise input_error("train_dp", "checkpoint_every_steps", "must be >= 1", "leave it unset or set >= 1")
    rank, world_size = _rank_and_world()
    device = resolve_device(config.device)
    plan = plan_dp_training(train.n, config, dp)
    if step_hook is not None:
        plan = step_hook.plan(plan)

    torch.manual_seed(config.seed)
    base_model = make_private_compatible(
        build_model(config.model, train.n_features, train.n_classes),
        allow_fixes=dp.allow_layer_fixes,
        source=f"{train.name}: model",
    )
    clipping = _resolve_clipping(dp.clipping, base_model)
    base_model.to(device)
    model: nn.Module = DPDDP(base_model) if world_size > 1 else base_model
    optimizer = _make_optimizer(model.parameters(), config)

    dp_seed = dp.dp_seed if dp.dp_seed is not None else secrets.randbits(63)
    sampler_seed, noise_seed = np.random.SeedSequence([int(dp_seed), rank]).generate_state(2, dtype=np.uint64)
    sampler_generator = torch.Generator().manual_seed(int(sampler_seed))
    noise_generator = torch.Generator(device=device).manual_seed(int(noise_seed))
    dataset = TensorDataset(torch.from_numpy(train.X), torch.from_numpy(train.y))
    loader = DataLoader(dataset, batch_size=config.batch_size, generator=sampler_generator)

    grad_sample_mode = "hooks" if clipping == "hooks" else "ghost"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=dp.accountant)
        # make_private_with_epsilon is exactly get_noise_multiplier(...) followed by make_private(...); the two
        # Opacus calls are made here so that the calibration computed for the ledger's reservation (plan) is
        # reused instead of binary-searching the accountant a second time (seconds per run).
        private = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(),
            data_loader=loader,
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            grad_sample_mode=grad_sample_mode,
            noise_generator=noise_generator,
            poisson_sampling=True,
        )
    if grad_sample_mode == "ghost":
        dp_module, dp_optimizer, dp_criterion, dp_loader = private
    else:
        dp_module, dp_optimizer, dp_loader = private
        dp_criterion = None
    if dp_loader.sample_rate != plan.sample_rate:
        raise RuntimeError(f"Opacus sample rate {dp_loader.sample_rate} differs from the plan {plan.sample_rate}")

    charged = engine.accountant
    if plan.noise_multiplier_applied != plan.noise_multiplier or plan.accounted_sample_rate is not None:
        # Fault injection: add the override noise (or account with a wrong sample rate), keep reporting the
        # calibrated epsilon, charge the real one.
        charged = create_accountant(mechanism=dp.accountant)
        dp_optimizer.noise_multiplier = plan.noise_multiplier_applied
        dp_optimizer.attach_step_hook(_override_hook(engine, charged, plan))
        log.warning(
            "fault injection: noise multiplier %.4g instead of %.4g",
            plan.noise_multiplier_applied,
            plan.noise_multiplier,
        )

    if grad_sample_mode == "ghost":
        _use_lean_accumulate(dp_optimizer)
    bk = None
    noisy_step = None
    if clipping == "bk":
        dp_module.remove_hooks()  # the ghost hooks are replaced by book-keeping; noise and accounting stay Opacus'
        bound = dp.max_grad_norm if step_hook is None else step_hook.clip_bound(dp.max_grad_norm)
        bk = BookKeepingClipper(base_model, bound)
        if world_size == 1 and not dp_optimizer.secure_mode:
            noisy_step = (
                _BookKeepingNoisyStep(dp_optimizer)
                if step_hook is None
                else _BookKeepingNoisyStep(dp_optimizer, step_hook, bk.clip_factors)
            )
    if step_hook is not None and (noisy_step is None or checkpoint_dir is not None):
        raise input_error(
            "train_dp",
            "step_hook",
            f"needs single-process book-keeping clipping and no checkpoints (clipping {clipping!r})",
            "audit a stack of Linear layers (logistic or MLP) without checkpoint_dir",
        )

    state = _TrainingState()
    ckpt_file = checkpoint_path(checkpoint_dir) if checkpoint_dir is not None else None
    run_fingerprint = fingerprint("dp-run", train.record_set_hash(), config, dp, world_size)
    if ckpt_file is not None:
        stored = _load_for_rank(ckpt_file)
        if stored is not None:
            if stored.get("fingerprint") != run_fingerprint:
                raise PPMLError(
                    f"{ckpt_file}: field 'fingerprint': the checkpoint belongs to a different run (other data or "
                    "configuration); fix: use a separate checkpoint_dir per run, or delete the stale checkpoint"
                )
            state = _restore(
                stored, engine, dp_module, dp_optimizer, charged, sampler_generator, noise_generator, rank, plan
            )
            log.info("resuming DP training at step %d (epoch %d)", state.global_step, state.epoch)

    trainer = _LoopContext(
        train=train,
        validation=validation,
        config=config,
        dp=dp,
        plan=plan,
        device=device,
        rank=rank,
        world_size=world_size,
        engine=engine,
        dp_module=dp_module,
        base_model=base_model,
        optimizer=dp_optimizer,
        criterion=dp_criterion,
        loader=dp_loader,
        bk=bk,
        noisy_step=noisy_step,
        clipping=clipping,
        charged=charged,
        sampler_generator=sampler_generator,
        noise_generator=noise_generator,
        ckpt_file=ckpt_file,
        fingerprint=run_fingerprint,
        spend_sink=spend_sink if rank == 0 else None,
        on_epoch=on_epoch if rank == 0 else None,
        on_step=on_step,
        checkpoint_every_steps=checkpoint_every_steps,
        step_hook=step_hook,
    )
    resumed_from = state.global_step if state.global_step or state.completed else None
    if not state.completed:
        trainer.run(state)

    final_module = _standalone_copy(config, dp, train.n_features, base_model, train.n_classes)
    if grad_sample_mode == "hooks" or clipping == "ghost":
        dp_module.remove_hooks()
    epsilon = epsilon_of_history(engine.accountant.history, dp.target_delta, dp.accountant)
    epsilon_charged = epsilon_of_history(charged.history, dp.target_delta, dp.accountant)
    return TrainedModel(
        module=final_module,
        config=config,
        dp=dp,
        epsilon=epsilon,
        delta=dp.target_delta,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=state.global_step,
        history=list(state.history),
        feature_names=train.feature_names,
        clipping=clipping,
        device=str(device),
        epsilon_charged=epsilon_charged,
        planned_steps=plan.planned_steps,
        resumed_from_step=resumed_from,
    )


@dataclass
class _TrainingState:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    train_seconds: float = 0.0
    history: list[EpochReport] = field(default_factory=list)
    completed: bool = False


@dataclass
class _LoopContext:
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
    noisy_step: _BookKeepingNoisyStep | None
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

    def run(self, state: _TrainingState) -> None:
        with warnings.catch_warnings():
            # Opacus' ghost/hooks modes fire this on every first layer (its input needs no gradient): expected.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            self._run(state)

    def _run(self, state: _TrainingState) -> None:
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

    def _run_steps(self, state: _TrainingState, logical_steps: int, X: torch.Tensor, y: torch.Tensor) -> None:
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

    def _report_spend(self, state: _TrainingState) -> None:
        if self.spend_sink is not None:
            self.spend_sink.after_steps(
                steps=state.global_step,
                epsilon=epsilon_of_history(self.charged.history, self.dp.target_delta, self.dp.accountant),
            )

    @staticmethod
    def _steps_in(accountant: Any) -> int:
        return sum(steps for _, _, steps in accountant.history)

    def _epoch_report(self, state: _TrainingState, seconds: float) -> EpochReport:
        epsilon = epsilon_of_history(self.engine.accountant.history, self.dp.target_delta, self.dp.accountant)
        accuracy, auc = _validation_metrics(self.base_model, self.validation, self.device)
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

    def _save(self, state: _TrainingState) -> None:
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


class IndexBatchMemoryManager(BatchMemoryManager):
    """Opacus' BatchMemoryManager, yielding index tensors instead of a DataLoader of collated rows.

    For a tabular model the per-step cost of Opacus' list-based path (``tolist``, ``np.array_split``, collating
    rows) is a large share of a step, so for the single-process Poisson sampler the same work is done on tensors:
    one Poisson draw per logical step from the loader's generator (``draw``: by default
    :func:`~ppml.training.sampling.poisson_indices`, the same distribution over subsets as Opacus'
    ``torch.rand(n) < q`` in O(batch) instead of O(n); :func:`~ppml.training.sampling.bernoulli_indices` is
    Opacus' own draw), the same split (``torch.tensor_split`` == ``np.array_split``) and the same
    ``signal_skip_step`` protocol with the DPOptimizer as ``BatchSplittingSampler``. A test checks that with
    Opacus' draw the index sequences equal Opacus' own. Other samplers (distributed) use Opacus' path unchanged.
    """

    def __init__(
        self,
        *,
        data_loader: DataLoader,
        max_physical_batch_size: int,
        optimizer: Any,
        draw: Callable[[int, float, torch.Generator], torch.Tensor] = poisson_indices,
    ) -> None:
        super().__init__(data_loader=data_loader, max_physical_batch_size=max_physical_batch_size, optimizer=optimizer)
        self.draw = draw

    def __enter__(self) -> Iterator[torch.Tensor]:  # type: ignore[override]
        sampler = self.data_loader.batch_sampler
        if type(sampler) is UniformWithReplacementSampler:
            return self._tensor_batches(sampler)
        return (torch.as_tensor(indices, dtype=torch.long) for indices in super().__enter__().batch_sampler)

    def _tensor_batches(self, sampler: UniformWithReplacementSampler) -> Iterator[torch.Tensor]:
        signal = self.optimizer.signal_skip_step
        for _ in range(sampler.steps):
            indices = self.draw(sampler.num_samples, sampler.sample_rate, sampler.generator)
            if len(indices) <= self.max_physical_batch_size:
                signal(do_skip=False)
                yield indices
                continue
            parts = torch.tensor_split(indices, math.ceil(len(indices) / self.max_physical_batch_size))
            for part in parts[:-1]:
                signal(do_skip=True)
                yield part
            signal(do_skip=False)
            yield parts[-1]


def _restore(
    stored: dict[str, Any],
    engine: PrivacyEngine,
    dp_module: nn.Module,
    optimizer: Any,
    charged: Any,
    sampler_generator: torch.Generator,
    noise_generator: torch.Generator,
    rank: int,
    plan: DPPlan,
) -> _TrainingState:
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
    return _TrainingState(
        epoch=stored["epoch"],
        step_in_epoch=stored["step_in_epoch"],
        global_step=stored["global_step"],
        loss_sum=stored["loss_sum"],
        samples=stored["samples"],
        train_seconds=stored["train_seconds"],
        history=[EpochReport(**r) for r in stored["history"]],
        completed=stored["completed"],
    )


def _load_for_rank(path: Path) -> dict[str, Any] | None:
    _, world_size = _rank_and_world()
    if world_size > 1:
        torch.distributed.barrier()
    return load_checkpoint(path)


def _gather(value: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, value)
    return gathered


class _LeanAccumulate:
    """Opacus' fast-gradient-clipping optimizer deep-copies every gradient on each step (``copy.deepcopy``); a
    tensor clone gives the same values at a fraction of the Python overhead that dominates small tabular models."""

    def accumulate(self: Any) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad.detach().clone()


def _use_lean_accumulate(optimizer: Any) -> None:
    base = type(optimizer)
    optimizer.__class__ = type(f"Lean{base.__name__}", (_LeanAccumulate, base), {})


class _BookKeepingNoisyStep:
    """``DPOptimizerFastGradientClipping.step`` for single-process book-keeping, minus its per-step bookkeeping.

    Per physical batch Opacus' optimizer deep-copies ``p.grad`` into ``p.summed_grad`` (or adds it), pops the
    skip signal, and at the end of a logical batch sets ``p.grad = summed + N(0, (sigma C)^2)`` drawn per parameter
    from its noise generator, divides by the expected batch size, calls the step hook (the accountant) and steps
    the wrapped optimizer; ``zero_grad`` then drops every buffer. For a small model that Python and the
    allocations cost about as much as the arithmetic. Here book-keeping writes the clipped sums straight into
    ``p.grad`` buffers allocated once (overwrite on a logical batch's first physical batch, add on the later
    ones), and this class does the rest with the very same operations: the same skip queue, the same normal
    draws (same generator, parameter order, shapes and std: the same numbers), the same division, the same hook
    (so the accountant history, checkpoints and the ledger see exactly what Opacus' step records) and the same
    wrapped-optimizer step. A test checks the weights equal those of the Opacus optimizer path.
    """

    def __init__(
        self,
        optimizer: Any,
        hook: StepHook | None = None,
        clip_factors: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.hook, self.clip_factors = hook, clip_factors
        self.params: list[nn.Parameter] = list(optimizer.params)
        # One flat buffer for all clipped sums (p.grad are views of it) and one for the noise: the per-parameter
        # draws land in views of the noise buffer, and adding and dividing are one operation each.
        total = sum(p.numel() for p in self.params)
        reference = self.params[0]
        self._grads = torch.zeros(total, dtype=reference.dtype, device=reference.device)
        self._noise = torch.empty_like(self._grads)
        self._noise_views: list[torch.Tensor] = []
        offset = 0
        for p in self.params:
            p.grad = self._grads[offset : offset + p.numel()].view_as(p)
            self._noise_views.append(self._noise[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        self.accumulating = False  # True after a skipped (non-final) physical batch of a logical batch

    def step(self) -> bool:
        """Returns whether a noisy optimizer step was taken (False: the logical batch continues)."""
        optimizer = self.optimizer
        if optimizer._check_skip_next_step():
            optimizer._is_last_step_skipped = True
            self.accumulating = True
            return False
        hook = self.hook
        if hook is not None:
            hook.before_noise(self._grads, self.clip_factors)
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        if hook is not None:
            std = hook.noise_std(std)
        if std != 0:  # Opacus adds zeros without drawing when std == 0
            generator = optimizer.generator
            for noise in self._noise_views:  # Opacus' order and shapes: the same numbers from the same generator
                noise.normal_(0.0, std, generator=generator)
            self._grads.add_(self._noise)
        if hook is not None:
            hook.after_noise(self._grads)
        if optimizer.loss_reduction == "mean":
            self._grads.div_(optimizer.expected_batch_size * optimizer.accumulated_iterations)
        if optimizer.step_hook:
            optimizer.step_hook(optimizer)
        optimizer._is_last_step_skipped = False
        optimizer.original_optimizer.step()
        self.accumulating = False
        return True


def _override_hook(engine: PrivacyEngine, charged: Any, plan: DPPlan) -> Callable[[Any], None]:
    def hook(optimizer: Any) -> None:
        rate = plan.sample_rate * optimizer.accumulated_iterations
        claimed_rate = (plan.accounted_sample_rate or plan.sample_rate) * optimizer.accumulated_iterations
        engine.accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=claimed_rate)
        charged.step(noise_multiplier=plan.noise_multiplier_applied, sample_rate=rate)

    return hook


# ------------------------------------------------------------------------------------------------ non-private training


def train_non_private(
    train: TabularSplit,
    config: TrainingConfig,
    *,
    validation: TabularSplit | None = None,
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """Same model, loss, optimizer and batch size without clipping or noise: the utility and speed reference."""
    _check_inputs(train, validation, None)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, train.n_features, train.n_classes).to(device)
    optimizer = _make_optimizer(model.parameters(), config)
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
        accuracy, auc = _validation_metrics(model, validation, device)
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


# ------------------------------------------------------------------------------------------------------------ helpers


def _check_inputs(train: TabularSplit, validation: TabularSplit | None, dp: DPConfig | None) -> None:
    if not isinstance(train, TabularSplit):
        raise input_error(
            "train",
            "X",
            f"expected a TabularSplit, got {type(train).__name__}",
            "wrap the features in ppml.training.TabularSplit",
        )
    train.require_trainable()
    if dp is not None:
        dp.check_delta_for(train.n, train.name)
    if validation is not None and validation.n_features != train.n_features:
        raise input_error(
            validation.name,
            "X",
            f"{validation.n_features} features, training has {train.n_features}",
            "encode validation with the same feature pipeline as training",
        )


def _resolve_clipping(requested: str, model: nn.Module) -> str:
    if requested == "auto":
        return "bk" if supports_book_keeping(model) else "ghost"
    if requested == "bk" and not supports_book_keeping(model):
        raise input_error(
            "dp config",
            "clipping",
            "book-keeping clipping needs a stack of Linear layers",
            "use clipping: ghost (or auto)",
        )
    return requested


def _make_optimizer(parameters: Any, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _standalone_copy(
    config: TrainingConfig, dp: DPConfig, n_features: int, trained: nn.Module, n_classes: int = 2
) -> nn.Module:
    """A clean CPU copy without Opacus hooks or per-sample attributes, in eval mode."""
    fresh = make_private_compatible(build_model(config.model, n_features, n_classes), allow_fixes=dp.allow_layer_fixes)
    fresh.load_state_dict({k: v.detach().cpu().clone() for k, v in trained.state_dict().items()})
    return fresh.eval()


def _validation_metrics(
    model: nn.Module, validation: TabularSplit | None, device: torch.device
) -> tuple[float | None, float | None]:
    if validation is None or validation.n == 0:
        return None, None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        proba = class_probabilities(model(torch.from_numpy(validation.X).to(device)))
    model.train(was_training)
    metrics = _metrics(proba, validation.y, None)
    return metrics["accuracy"], (None if math.isnan(metrics["auc"]) else metrics["auc"])


def _metrics(proba: np.ndarray, y: np.ndarray, losses: np.ndarray | None) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    if proba.ndim == 2:  # multi-class: the arg-max class; one-vs-rest macro ROC AUC over the classes present
        accuracy = float((proba.argmax(axis=1) == y).mean()) if len(y) else float("nan")
        return {"accuracy": accuracy, "auc": _macro_auc(y, proba), **_mean_loss(losses)}
    accuracy = float(((proba >= 0.5).astype(np.int64) == y).mean()) if len(y) else float("nan")
    auc = float(roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else float("nan")
    result = {"accuracy": accuracy, "auc": auc}
    if losses is not None:
        result["loss"] = float(losses.mean()) if len(losses) else float("nan")
    return result


def _mean_loss(losses: np.ndarray | None) -> dict[str, float]:
    if losses is None:
        return {}
    return {"loss": float(losses.mean()) if len(losses) else float("nan")}


def _macro_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have both members and non-members in ``y``."""
    from sklearn.metrics import roc_auc_score

    scores = [
        float(roc_auc_score(y == c, proba[:, c])) for c in range(proba.shape[1]) if 0 < int((y == c).sum()) < len(y)
    ]
    return float(np.mean(scores)) if scores else float("nan")


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
