"""User-level DP-SGD: the privacy unit is the data subject, not the record (``privacy.privacy_unit: subject``).

Opacus clips per *example*; it has no user-level mode. This loop keeps Opacus' accountants and calibration and
changes the unit the mechanism protects (McMahan et al. 2018, "Learning differentially private recurrent language
models", DP-FedAvg's user-level sampling and clipping):

1. **Poisson sampling of subjects**: each step draws every subject independently with probability ``q``; a sampled
   subject brings all of its (at most ``c``, see :mod:`ppml.training.contribution`) records.
2. **Per-subject clipping**: the per-example gradients of a subject's records are *summed*, and the sum is clipped
   to ``max_grad_norm``; so adding or removing a whole person moves the noisy sum by at most ``max_grad_norm``.
3. **Gaussian noise** ``N(0, (sigma * max_grad_norm)^2)`` on the sum of clipped subject sums, divided by the
   expected number of sampled subjects ``q * m``.

Each step is then exactly the Poisson-subsampled Gaussian mechanism with respect to adding or removing one
*subject*, so the accountant history ``(sigma, q, steps)`` -- the very thing the ledger composes -- is a
per-person guarantee, with no group-privacy conversion.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ppml.errors import input_error
from ppml.training.accounting import DPPlan, PrivacySpendSink, epsilon_of_history
from ppml.training.config import DPConfig, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_steps import StepHook
from ppml.training.models import build_model
from ppml.training.planning import plan_dp_training
from ppml.training.trained_model import EpochReport, TrainedModel, class_probabilities, classification_metrics

#: The clipping mode recorded for user-level runs (MLflow, metadata, the report).
USER_LEVEL = "user_level"


def plan_user_level(n_subjects: int, config: TrainingConfig, dp: DPConfig) -> DPPlan:
    """Calibrate the noise for Poisson sampling of subjects at ``q = 1 / ceil(m / batch_size)``.

    ``batch_size`` counts subjects here. The plan's ``n_records`` is the number of subjects ``m``. The one planner
    of every DP-SGD run (:func:`ppml.training.planning.plan_dp_training`) does the calibration.
    """
    if n_subjects < 1:
        raise input_error("training window", "subjects", "no subject to train on", "collect data first")
    return plan_dp_training(n_subjects, config, dp, unit="subject sample rate")


def train_user_level(
    train: TabularSplit,
    subjects: np.ndarray,
    config: TrainingConfig,
    dp: DPConfig,
    *,
    plan: DPPlan | None = None,
    validation: TabularSplit | None = None,
    spend_sink: PrivacySpendSink | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    step_hook: StepHook | None = None,
) -> TrainedModel:
    """Train with user-level DP-SGD; ``subjects[i]`` is the subject index (0..m-1) of ``train`` row ``i``.

    Every epoch is pre-charged through ``spend_sink`` before its steps run (a killed run over-counts, never
    under-counts). ``plan`` is the reservation's plan (by default calibrated for the subjects present): the
    sample rate stays the planned one even if fewer subjects remain, so the charge is what was reserved.
    ``step_hook``: the white-box audit's canaries or a planted bug (tests of the audit), as for ``train_dp``:
    ``plan``, ``clip_bound``, ``batch`` (the sampled subjects' row indices), ``before_noise`` (the flat sum of
    clipped subject sums), ``noise_std`` and ``after_noise`` (the noisy sum); ``draw`` is not used here.
    """
    train.require_trainable()
    codes = _subject_codes(subjects, train.n)
    m = int(codes.max()) + 1
    plan = plan or plan_user_level(m, config, dp)
    hook = step_hook or StepHook()
    plan = hook.plan(plan)
    torch.manual_seed(config.seed)
    model = build_model(config.model, train.n_features, train.n_classes)
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(dp.dp_seed if dp.dp_seed is not None else secrets.randbits(63))
    X, y = torch.from_numpy(train.X), torch.from_numpy(train.y)
    codes_t = torch.from_numpy(codes)
    clip = hook.clip_bound(dp.max_grad_norm)
    step = _StepKernel(model, clip, plan.noise_multiplier_applied, config.max_physical_batch_size, hook)
    history: list[EpochReport] = []
    done = 0
    for epoch in range(1, config.epochs + 1):
        target = min(done + plan.steps_per_epoch, plan.planned_steps)
        if spend_sink is not None:
            spend_sink.before_steps(steps=target, epsilon=_epsilon(plan, target))
        started, losses, samples = time.perf_counter(), [], 0
        for _ in range(target - done):
            sampled = torch.rand(m, generator=generator) < plan.sample_rate
            rows = hook.batch(torch.nonzero(sampled[codes_t]).squeeze(1))
            loss = step.run(X[rows], y[rows], codes_t[rows], generator, plan.sample_rate * m)
            optimizer.step()
            losses.append(loss)
            samples += len(rows)
        done = target
        spent = _epsilon(plan, done)
        if spend_sink is not None:
            spend_sink.after_steps(steps=done, epsilon=spent)
        report = _report(model, epoch, losses, spent, validation, time.perf_counter() - started, done, samples)
        history.append(report)
        if on_epoch is not None:
            on_epoch(report)
    model.eval()
    return TrainedModel(
        module=model,
        config=config,
        dp=dp,
        epsilon=epsilon_of_history([(plan.noise_multiplier, plan.sample_rate, done)], plan.delta, plan.accountant),
        delta=plan.delta,
        noise_multiplier=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        steps=done,
        history=history,
        feature_names=train.feature_names,
        clipping=USER_LEVEL,
        device="cpu",
        epsilon_charged=spent,
        planned_steps=plan.planned_steps,
    )


class _StepKernel:
    """One user-level step: per-example gradients, summed per subject, clipped, summed, noised, averaged."""

    def __init__(
        self, model: torch.nn.Module, clip: float, sigma: float, physical: int, hook: StepHook | None = None
    ) -> None:
        self.model, self.clip, self.sigma, self.physical = model, float(clip), float(sigma), int(physical)
        self.hook = hook or StepHook()
        self.names = [name for name, _ in model.named_parameters()]

        def loss_of(params: dict[str, torch.Tensor], x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            logits = functional_call(model, params, (x.unsqueeze(0),))
            return F.cross_entropy(logits, target.unsqueeze(0))

        self.per_example = vmap(grad(loss_of), in_dims=(None, 0, 0))

    def clip_factors(self, norms: torch.Tensor) -> torch.Tensor:
        """``min(1, C / (norm + 1e-6))`` per subject sum: Opacus' per-example formula, applied per person."""
        return torch.clamp(self.clip / (norms + 1e-6), max=1.0)

    def run(
        self, X: torch.Tensor, y: torch.Tensor, subjects: torch.Tensor, generator: torch.Generator, expected: float
    ) -> float:
        params = {name: p.detach() for name, p in self.model.named_parameters()}
        size = sum(p.numel() for p in params.values())
        total = torch.zeros(size)
        loss = 0.0
        if len(X):
            local, inverse = torch.unique(subjects, return_inverse=True)
            sums = torch.zeros(len(local), size)
            for start in range(0, len(X), self.physical):
                part = slice(start, start + self.physical)
                grads = self.per_example(params, X[part], y[part])
                flat = torch.cat([grads[name].reshape(len(X[part]), -1) for name in self.names], dim=1)
                sums.index_add_(0, inverse[part], flat)
            total = (sums * self.clip_factors(sums.norm(dim=1)).unsqueeze(1)).sum(dim=0)
            with torch.no_grad():
                loss = float(F.cross_entropy(self.model(X), y))
        self.hook.before_noise(total, self.clip_factors)
        std = self.hook.noise_std(self.sigma * self.clip)
        noisy = total + torch.normal(0.0, std, size=(size,), generator=generator)
        self.hook.after_noise(noisy)
        noisy = noisy / max(expected, 1e-12)
        offset = 0
        for parameter in self.model.parameters():
            count = parameter.numel()
            parameter.grad = noisy[offset : offset + count].view_as(parameter).clone()
            offset += count
        return loss


def _subject_codes(subjects: np.ndarray, n: int) -> np.ndarray:
    codes = np.asarray(subjects)
    if codes.shape != (n,) or codes.dtype.kind not in "iu" or (n and codes.min() < 0):
        raise input_error(
            "train",
            "subjects",
            f"expected one non-negative subject index per training row ({n}), got shape {codes.shape}",
            "map pseudonyms to indices with ppml.training.contribution.subject_index",
        )
    return codes.astype(np.int64)


def _optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _epsilon(plan: DPPlan, steps: int) -> float:
    return epsilon_of_history(plan.history(steps), plan.delta, plan.accountant)


def _report(
    model: torch.nn.Module,
    epoch: int,
    losses: list[float],
    epsilon: float,
    validation: TabularSplit | None,
    seconds: float,
    steps: int,
    samples: int,
) -> EpochReport:
    accuracy = auc = None
    if validation is not None and validation.n:
        model.eval()
        with torch.no_grad():
            proba = class_probabilities(model(torch.from_numpy(validation.X)))  # (n,) binary, (n, K) multi-class
        model.train()
        metrics = classification_metrics(proba, validation.y, None)
        accuracy = metrics["accuracy"]
        auc = None if math.isnan(metrics["auc"]) else metrics["auc"]
    return EpochReport(
        epoch=epoch,
        train_loss=float(np.mean(losses)) if losses else float("nan"),
        epsilon=epsilon,
        validation_accuracy=accuracy,
        seconds=seconds,
        steps=steps,
        samples=samples,
        train_seconds=seconds,
        validation_auc=auc,
    )


def describe(plan: DPPlan, contribution: dict[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate parameters of a user-level run for the ledger and MLflow."""
    return {
        "privacy_unit": "subject",
        "clipping": USER_LEVEL,
        "subjects": plan.n_records,
        "subject_sample_rate": plan.sample_rate,
        **({"max_records_per_subject": contribution["max_records_per_subject"]} if contribution else {}),
    }
