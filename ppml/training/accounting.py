"""Privacy accounting of a DP-SGD run: the plan the ledger reserves, Opacus' noise calibration, the epsilon of an
accountant history, and where a run reports what it spends.

Kept apart from the training loop so that the budget side (what may be spent, what was spent) can be read and
tested without torch models, and so that every caller composes epsilon with the very same function.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from opacus import PrivacyEngine
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier


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


def override_hook(engine: PrivacyEngine, charged: Any, plan: DPPlan) -> Callable[[Any], None]:
    def hook(optimizer: Any) -> None:
        rate = plan.sample_rate * optimizer.accumulated_iterations
        claimed_rate = (plan.accounted_sample_rate or plan.sample_rate) * optimizer.accumulated_iterations
        engine.accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=claimed_rate)
        charged.step(noise_multiplier=plan.noise_multiplier_applied, sample_rate=rate)

    return hook
