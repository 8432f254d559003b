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

The concerns live in their own modules and :func:`train_dp` calls them in sequence: the plan
(:mod:`ppml.training.planning`), accounting (:mod:`ppml.training.accounting`), the Opacus setup (here), the loop
(:mod:`ppml.training.dp_loop`, :mod:`ppml.training.dp_steps`) and the returned model
(:mod:`ppml.training.trained_model`).
"""

from __future__ import annotations

import logging
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ppml.errors import PPMLError, input_error
from ppml.training.accounting import DPPlan, PrivacySpendSink, epsilon_of_history, override_hook
from ppml.training.book_keeping import BookKeepingClipper
from ppml.training.checkpoint import checkpoint_path
from ppml.training.config import DPConfig, TrainingConfig, fingerprint
from ppml.training.data import TabularSplit, check_training_inputs
from ppml.training.dp_loop import LoopContext, TrainingState, load_for_rank, rank_and_world, restore_state
from ppml.training.dp_steps import BookKeepingNoisyStep, StepHook, use_lean_accumulate
from ppml.training.models import (
    build_model,
    make_optimizer,
    make_private_compatible,
    resolve_clipping,
    resolve_device,
)
from ppml.training.planning import plan_dp_training
from ppml.training.trained_model import EpochCallback, TrainedModel, standalone_copy

log = logging.getLogger(__name__)


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
    check_training_inputs(train, validation, dp)
    if checkpoint_every_steps is not None and checkpoint_every_steps < 1:
        raise input_error("train_dp", "checkpoint_every_steps", "must be >= 1", "leave it unset or set >= 1")
    rank, world_size = rank_and_world()
    device = resolve_device(config.device)
    plan = plan_dp_training(train.n, config, dp)
    if step_hook is not None:
        plan = step_hook.plan(plan)
    run = _private_run(train, config, dp, plan, device, rank, world_size, step_hook)
    if step_hook is not None and (run.noisy_step is None or checkpoint_dir is not None):
        raise input_error(
            "train_dp",
            "step_hook",
            f"needs single-process book-keeping clipping and no checkpoints (clipping {run.clipping!r})",
            "audit a stack of Linear layers (logistic or MLP) without checkpoint_dir",
        )
    ckpt_file = checkpoint_path(checkpoint_dir) if checkpoint_dir is not None else None
    run_fingerprint = fingerprint("dp-run", train.record_set_hash(), config, dp, world_size)
    state = _resume_state(ckpt_file, run_fingerprint, run, rank, plan)
    trainer = LoopContext(
        train=train,
        validation=validation,
        config=config,
        dp=dp,
        plan=plan,
        device=device,
        rank=rank,
        world_size=world_size,
        engine=run.engine,
        dp_module=run.dp_module,
        base_model=run.base_model,
        optimizer=run.optimizer,
        criterion=run.criterion,
        loader=run.loader,
        bk=run.bk,
        noisy_step=run.noisy_step,
        clipping=run.clipping,
        charged=run.charged,
        sampler_generator=run.sampler_generator,
        noise_generator=run.noise_generator,
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
    return _trained_model(train, config, dp, plan, run, state, device, resumed_from)


@dataclass
class _PrivateRun:
    """Everything Opacus' ``make_private`` and the clipping set-up hand to the loop."""

    base_model: nn.Sequential
    dp_module: nn.Module
    optimizer: Any
    criterion: Any
    loader: DataLoader
    engine: PrivacyEngine
    charged: Any  # the accountant the ledger is charged from (Opacus' own unless under fault injection)
    clipping: str
    grad_sample_mode: str
    sampler_generator: torch.Generator
    noise_generator: torch.Generator
    bk: BookKeepingClipper | None = None
    noisy_step: BookKeepingNoisyStep | None = None


def _private_run(
    train: TabularSplit,
    config: TrainingConfig,
    dp: DPConfig,
    plan: DPPlan,
    device: torch.device,
    rank: int,
    world_size: int,
    step_hook: StepHook | None,
) -> _PrivateRun:
    """Model, optimizer and Poisson loader made private with the plan's noise; then fault injection and clipping."""
    torch.manual_seed(config.seed)
    base_model = make_private_compatible(
        build_model(config.model, train.n_features, train.n_classes),
        allow_fixes=dp.allow_layer_fixes,
        source=f"{train.name}: model",
    )
    clipping = resolve_clipping(dp.clipping, base_model)
    base_model.to(device)
    model: nn.Module = DPDDP(base_model) if world_size > 1 else base_model
    optimizer = make_optimizer(model.parameters(), config)
    sampler_generator, noise_generator = _generators(dp, rank, device)
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
    run = _PrivateRun(
        base_model,
        dp_module,
        dp_optimizer,
        dp_criterion,
        dp_loader,
        engine,
        _charged_accountant(engine, dp_optimizer, dp_loader, plan, dp),
        clipping,
        grad_sample_mode,
        sampler_generator,
        noise_generator,
    )
    _attach_clipping(run, dp, world_size, step_hook)
    return run


def _generators(dp: DPConfig, rank: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The sampler's and the noise's generators, seeded per rank from ``dp.dp_seed`` (random when unset)."""
    dp_seed = dp.dp_seed if dp.dp_seed is not None else secrets.randbits(63)
    sampler_seed, noise_seed = np.random.SeedSequence([int(dp_seed), rank]).generate_state(2, dtype=np.uint64)
    sampler_generator = torch.Generator().manual_seed(int(sampler_seed))
    noise_generator = torch.Generator(device=device).manual_seed(int(noise_seed))
    return sampler_generator, noise_generator


def _charged_accountant(
    engine: PrivacyEngine, dp_optimizer: Any, dp_loader: DataLoader, plan: DPPlan, dp: DPConfig
) -> Any:
    """Opacus' accountant, or under fault injection a second one that charges the noise really added."""
    if plan.noise_multiplier_applied == plan.noise_multiplier and plan.accounted_sample_rate is None:
        if 1 / len(dp_loader) != plan.sample_rate:
            # Opacus accounts at 1 / len(loader), and the Poisson loader's length is int(1 / q), which rounds
            # 1 / (1 / 93) down to 92: account the rate the sampler really draws at, the one the plan reserved.
            dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=plan.sample_rate))
        return engine.accountant
    # Fault injection: add the override noise (or account with a wrong sample rate), keep reporting the
    # calibrated epsilon, charge the real one.
    charged = create_accountant(mechanism=dp.accountant)
    dp_optimizer.noise_multiplier = plan.noise_multiplier_applied
    dp_optimizer.attach_step_hook(override_hook(engine, charged, plan))
    log.warning(
        "fault injection: noise multiplier %.4g instead of %.4g", plan.noise_multiplier_applied, plan.noise_multiplier
    )
    return charged


def _attach_clipping(run: _PrivateRun, dp: DPConfig, world_size: int, step_hook: StepHook | None) -> None:
    """Ghost: Opacus' optimizer with lean accumulation. Book-keeping: our clipper (and, single-process, our step)."""
    if run.grad_sample_mode == "ghost":
        use_lean_accumulate(run.optimizer)
    if run.clipping != "bk":
        return
    run.dp_module.remove_hooks()  # the ghost hooks are replaced by book-keeping; noise and accounting stay Opacus'
    bound = dp.max_grad_norm if step_hook is None else step_hook.clip_bound(dp.max_grad_norm)
    run.bk = BookKeepingClipper(run.base_model, bound)
    if world_size == 1 and not run.optimizer.secure_mode:
        run.noisy_step = (
            BookKeepingNoisyStep(run.optimizer)
            if step_hook is None
            else BookKeepingNoisyStep(run.optimizer, step_hook, run.bk.clip_factors)
        )


def _resume_state(
    ckpt_file: Path | None, run_fingerprint: str, run: _PrivateRun, rank: int, plan: DPPlan
) -> TrainingState:
    """A fresh state, or the checkpoint's when it belongs to this very run (refused when it belongs to another)."""
    if ckpt_file is None:
        return TrainingState()
    stored = load_for_rank(ckpt_file)
    if stored is None:
        return TrainingState()
    if stored.get("fingerprint") != run_fingerprint:
        raise PPMLError(
            f"{ckpt_file}: field 'fingerprint': the checkpoint belongs to a different run (other data or "
            "configuration); fix: use a separate checkpoint_dir per run, or delete the stale checkpoint"
        )
    state = restore_state(
        stored,
        run.engine,
        run.dp_module,
        run.optimizer,
        run.charged,
        run.sampler_generator,
        run.noise_generator,
        rank,
        plan,
    )
    log.info("resuming DP training at step %d (epoch %d)", state.global_step, state.epoch)
    return state


def _trained_model(
    train: TabularSplit,
    config: TrainingConfig,
    dp: DPConfig,
    plan: DPPlan,
    run: _PrivateRun,
    state: TrainingState,
    device: torch.device,
    resumed_from: int | None,
) -> TrainedModel:
    """A hook-free CPU copy of the model with the epsilon reported (claimed) and charged (really spent)."""
    final_module = standalone_copy(config, dp, train.n_features, run.base_model, train.n_classes)
    if run.grad_sample_mode == "hooks" or run.clipping == "ghost":
        run.dp_module.remove_hooks()
    epsilon = epsilon_of_history(run.engine.accountant.history, dp.target_delta, dp.accountant)
    epsilon_charged = epsilon_of_history(run.charged.history, dp.target_delta, dp.accountant)
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
        clipping=run.clipping,
        device=str(device),
        epsilon_charged=epsilon_charged,
        planned_steps=plan.planned_steps,
        resumed_from_step=resumed_from,
    )


# ------------------------------------------------------------------------------------------------------ re-exports
# dp_sgd.py used to hold all of the above and below; these names stay importable from here for this session's
# other branches (they import ``ppml.training.dp_sgd``). The project's own code imports the new modules.
from ppml.training.accounting import calibrated_noise_multiplier  # noqa: E402
from ppml.training.dp_steps import IndexBatchMemoryManager  # noqa: E402
from ppml.training.non_private import train_non_private  # noqa: E402
from ppml.training.trained_model import (  # noqa: E402
    EpochReport,
    class_probabilities,
    classification_metrics,
    output_width,
)

_metrics = classification_metrics
_check_inputs = check_training_inputs
_make_optimizer = make_optimizer
_resolve_clipping = resolve_clipping
_BookKeepingNoisyStep = BookKeepingNoisyStep

__all__ = [
    "DPPlan",
    "EpochCallback",
    "EpochReport",
    "IndexBatchMemoryManager",
    "PrivacySpendSink",
    "StepHook",
    "TrainedModel",
    "calibrated_noise_multiplier",
    "class_probabilities",
    "epsilon_of_history",
    "output_width",
    "plan_dp_training",
    "train_dp",
    "train_non_private",
]
