"""The planted-bug corpus: fault injection that tests the audit itself (never reachable from a policy).

Each bug is a :class:`~ppml.training.dp_steps.StepHook` passed as ``train_dp(..., step_hook=...)``: a keyword
argument of the trainer only. ``ppml.policy`` forbids unknown fields, so no policy can name one, and the
Dagster assets never build one. The claimed epsilon stays the one the (possibly misled) accountant reports, as
in a real bug; what differs is the mechanism that actually ran:

=================  ===========================================================================================
noise_x0 ... x0.5  the optimizer adds ``factor`` times the calibrated noise
clipping_off       the per-example clip bound is infinite (the clipper never scales a gradient down)
shuffled_batches   fixed-size batches of a per-epoch shuffle, while the accountant assumes Poisson sampling
accountant_q_10    the noise is calibrated for, and the accountant fed, a tenth of the real sample rate
noise_skipped      every ``skip_every``-th step adds no noise
=================  ===========================================================================================
"""

from __future__ import annotations

import dataclasses
import enum
import math
import warnings
from collections.abc import Callable, Sequence

import torch
from opacus.accountants.utils import get_noise_multiplier

from ppml.training.accounting import DPPlan, epsilon_of_history
from ppml.training.dp_steps import StepHook


class PlantedBug(enum.Enum):
    NOISE_X0 = "noise_x0"
    NOISE_X0_1 = "noise_x0.1"
    NOISE_X0_3 = "noise_x0.3"
    NOISE_X0_5 = "noise_x0.5"
    CLIPPING_OFF = "clipping_off"
    SHUFFLED_BATCHES = "shuffled_batches"
    ACCOUNTANT_Q_10 = "accountant_q_10"
    NOISE_SKIPPED = "noise_skipped"


NOISE_FACTORS = {
    PlantedBug.NOISE_X0: 0.0,
    PlantedBug.NOISE_X0_1: 0.1,
    PlantedBug.NOISE_X0_3: 0.3,
    PlantedBug.NOISE_X0_5: 0.5,
}


class NoiseScaled(StepHook):
    """Adds ``factor`` times the calibrated noise; the accountant keeps claiming the calibrated epsilon."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def plan(self, plan: DPPlan) -> DPPlan:
        applied = plan.noise_multiplier * self.factor
        charged = epsilon_of_history([(applied, plan.sample_rate, plan.planned_steps)], plan.delta, plan.accountant)
        return dataclasses.replace(plan, noise_multiplier_applied=applied, epsilon_charged_planned=charged)


class ClippingOff(StepHook):
    def clip_bound(self, bound: float) -> float:
        return math.inf


class NoiseSkipped(StepHook):
    """No noise on every ``skip_every``-th logical step (e.g. a branch that forgets it on the last batch)."""

    def __init__(self, skip_every: int = 10) -> None:
        self.skip_every, self._step = int(skip_every), 0

    def noise_std(self, std: float) -> float:
        self._step += 1
        return 0.0 if self._step % self.skip_every == 0 else std


class AccountantWrongRate(StepHook):
    """Noise calibrated for, and the accountant fed, ``sample_rate * factor`` over the run's real steps."""

    def __init__(self, factor: float = 0.1) -> None:
        self.factor = float(factor)

    def plan(self, plan: DPPlan) -> DPPlan:
        claimed_rate = plan.sample_rate * self.factor
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = get_noise_multiplier(
                target_epsilon=plan.epsilon_planned,
                target_delta=plan.delta,
                sample_rate=claimed_rate,
                steps=plan.planned_steps,
                accountant=plan.accountant,
            )
        return dataclasses.replace(
            plan, noise_multiplier=sigma, noise_multiplier_applied=sigma, accounted_sample_rate=claimed_rate
        )


class ShuffledBatches(StepHook):
    """Each epoch a random permutation cut into ``1 / q`` equal batches: every record exactly once per epoch."""

    def draw(self, draw: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        batches: list[torch.Tensor] = []

        def shuffled(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
            if not batches:
                order = torch.randperm(n, generator=generator)
                batches.extend(torch.tensor_split(order, round(1 / q)))
            return batches.pop(0).sort().values

        return shuffled


class ChainedHooks(StepHook):
    """Several hooks in order (a planted bug, then the audit's canaries that observe its effect)."""

    def __init__(self, hooks: Sequence[StepHook]) -> None:
        self.hooks = list(hooks)

    def plan(self, plan: DPPlan) -> DPPlan:
        for hook in self.hooks:
            plan = hook.plan(plan)
        return plan

    def draw(self, draw: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        for hook in self.hooks:
            draw = hook.draw(draw)
        return draw

    def clip_bound(self, bound: float) -> float:
        for hook in self.hooks:
            bound = hook.clip_bound(bound)
        return bound

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        for hook in self.hooks:
            indices = hook.batch(indices)
        return indices

    def before_noise(self, grads: torch.Tensor, clip_factors: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for hook in self.hooks:
            hook.before_noise(grads, clip_factors)

    def noise_std(self, std: float) -> float:
        for hook in self.hooks:
            std = hook.noise_std(std)
        return std

    def after_noise(self, grads: torch.Tensor) -> None:
        for hook in self.hooks:
            hook.after_noise(grads)


def planted_bug(bug: PlantedBug | str) -> StepHook:
    """The fault-injection hook of one corpus entry."""
    bug = PlantedBug(bug)
    if bug in NOISE_FACTORS:
        return NoiseScaled(NOISE_FACTORS[bug])
    if bug is PlantedBug.CLIPPING_OFF:
        return ClippingOff()
    if bug is PlantedBug.SHUFFLED_BATCHES:
        return ShuffledBatches()
    if bug is PlantedBug.ACCOUNTANT_Q_10:
        return AccountantWrongRate(0.1)
    return NoiseSkipped(10)
