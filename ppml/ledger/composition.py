"""Composition of the privacy spent by many training runs on the same people.

Every DP-SGD run is an adaptive composition of Poisson-subsampled Gaussian mechanisms, described completely by
its accountant history ``(noise multiplier, sample rate, steps)``. Runs that touch the same person compose again,
adaptively (next week's run may depend on this week's model). Three valid upper bounds are computed at the
policy's lifetime delta, and the smallest is used -- the minimum of valid bounds is itself a valid bound:

1. **Basic composition**: ``sum(epsilon_i)`` at ``sum(delta_i)``; valid only when ``sum(delta_i)`` is at most the
   lifetime delta. Conservative, and exact for a single run (so a lone run is charged its own accountant's
   epsilon).
2. **RDP composition**: Renyi-DP of the subsampled Gaussian adds up over runs (Mironov 2017; Mironov, Talwar &
   Zhang 2019) under adaptive composition, then converts once to (epsilon, lifetime delta). Far tighter than basic
   composition after a few runs, cheap for any number of runs.
3. **PRV composition**: the privacy-loss random variables of all runs convolved numerically (Gopi, Lee & Wutschitz
   2021), Opacus' default accountant; the tightest, used when the runs have few distinct (noise, rate) pairs
   (identical runs merge into one segment) because its cost grows with each distinct pair.

Runs a person is not in cannot reveal anything about them, so composing every run that touches a scope over-
approximates each person's loss: sound, never an under-count.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from opacus.accountants import PRVAccountant, RDPAccountant

#: PRV composition is skipped above this many distinct (noise, sample rate) segments (its cost grows with each).
PRV_MAX_SEGMENTS = 3
#: RDP orders: Opacus' defaults plus large orders, which matter when many runs have composed.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024]


@dataclass(frozen=True)
class Charge:
    """What one run may have spent: its accountant history and its own (epsilon, delta)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    delta: float


@dataclass(frozen=True)
class Composition:
    """Composed spend at ``delta``: ``epsilon`` is the smallest valid bound, named by ``method``."""

    epsilon: float
    delta: float
    method: str
    runs: int
    basic_epsilon: float
    basic_delta: float
    rdp_epsilon: float | None
    prv_epsilon: float | None

    def to_dict(self) -> dict[str, float | str | int | None]:
        return asdict(self)


def compose(charges: Iterable[Charge], delta: float) -> Composition:
    """Compose ``charges`` at ``delta`` with the tightest of basic, RDP and PRV composition that is valid."""
    charged = [c for c in charges if c.steps > 0]
    if not charged:
        return Composition(0.0, delta, "none", 0, 0.0, 0.0, 0.0, 0.0)
    basic_epsilon = math.fsum(c.epsilon for c in charged)
    basic_delta = math.fsum(c.delta for c in charged)
    segments = _segments(charged)
    rdp_epsilon = _rdp(segments, delta)
    prv_epsilon = _prv(segments, delta) if len(segments) <= PRV_MAX_SEGMENTS else None
    bounds = {"rdp": rdp_epsilon}
    if basic_delta <= delta * (1 + 1e-9):
        bounds["basic"] = basic_epsilon
    if prv_epsilon is not None:
        bounds["prv"] = prv_epsilon
    method, epsilon = min(bounds.items(), key=lambda item: item[1])
    return Composition(epsilon, delta, method, len(charged), basic_epsilon, basic_delta, rdp_epsilon, prv_epsilon)


def _segments(charges: list[Charge]) -> list[tuple[float, float, int]]:
    """Runs with the same (noise, rate) merge into one segment: composition is order-free."""
    merged: dict[tuple[float, float], int] = {}
    for charge in charges:
        key = (float(charge.noise_multiplier), float(charge.sample_rate))
        merged[key] = merged.get(key, 0) + int(charge.steps)
    return [(sigma, rate, steps) for (sigma, rate), steps in sorted(merged.items())]


def _rdp(segments: list[tuple[float, float, int]], delta: float) -> float:
    if any(sigma <= 0 for sigma, _, _ in segments):
        return math.inf
    accountant = RDPAccountant()
    accountant.history = list(segments)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta=delta, alphas=RDP_ORDERS))


def _prv(segments: list[tuple[float, float, int]], delta: float) -> float | None:
    if any(sigma <= 0 for sigma, _, _ in segments):
        return math.inf
    accountant = PRVAccountant()
    accountant.history = list(segments)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(accountant.get_epsilon(delta=delta))
    except (ValueError, OverflowError, FloatingPointError, RuntimeError):
        return None  # numerically out of range: the RDP (and basic) bound still stand
