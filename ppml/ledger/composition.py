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

**Pure epsilon-DP releases** (the OpenDP summary: Laplace mechanisms, delta 0) are charges too. An epsilon-DP
mechanism is (alpha, min(epsilon, alpha * epsilon**2 / 2))-RDP at every order alpha (Bun & Steinke 2016: it is
epsilon**2/2-zCDP; Mironov 2017, Prop. 3), so its RDP curve adds to the Gaussian runs' before the one conversion.
PRV composition has no pure-DP mechanism here, so the PRV bound of the Gaussian runs is combined with the pure
releases by basic composition (epsilons add at the same delta) -- still a valid bound; the minimum is taken.

Runs a person is not in cannot reveal anything about them, so composing every run that touches a scope over-
approximates each person's loss: sound, never an under-count.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
from opacus.accountants import PRVAccountant
from opacus.accountants.analysis import rdp as rdp_analysis

#: PRV composition is skipped above this many distinct (noise, sample rate) segments (its cost grows with each).
PRV_MAX_SEGMENTS = 3
#: RDP orders: Opacus' defaults plus large orders, which matter when many runs have composed.
RDP_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 128, 256, 512, 1024]
#: The mechanism of a DP-SGD run (Poisson-subsampled Gaussian, described by its accountant history).
SUBSAMPLED_GAUSSIAN = "subsampled_gaussian"
#: A pure epsilon-DP release (delta 0), e.g. Laplace counts: described by its epsilon alone.
PURE_DP = "pure_dp"


@dataclass(frozen=True)
class Charge:
    """What one run may have spent: its accountant history and its own (epsilon, delta).

    A pure-DP charge (``mechanism=PURE_DP``) is described by ``epsilon`` alone (delta 0, one step, no noise
    multiplier or sample rate).
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    delta: float
    mechanism: str = SUBSAMPLED_GAUSSIAN

    @classmethod
    def pure(cls, epsilon: float) -> Charge:
        return cls(0.0, 0.0, 1, float(epsilon), 0.0, PURE_DP)


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
    return _compose(tuple(c for c in charges if c.steps > 0), float(delta))


@functools.lru_cache(maxsize=2048)
def _compose(charged: tuple[Charge, ...], delta: float) -> Composition:
    """Cached: a pure function of the charges, and every asset of a run composes the same sets of runs again (one
    per scope, day and request; a PRV composition takes seconds)."""
    if not charged:
        return Composition(0.0, delta, "none", 0, 0.0, 0.0, 0.0, 0.0)
    basic_epsilon = math.fsum(c.epsilon for c in charged)
    basic_delta = math.fsum(c.delta for c in charged)
    pure = [c.epsilon for c in charged if c.mechanism == PURE_DP]
    segments = _segments([c for c in charged if c.mechanism != PURE_DP])
    rdp_epsilon = _rdp(segments, pure, delta)
    prv_epsilon = None
    if len(segments) <= PRV_MAX_SEGMENTS:
        gaussian = _prv(segments, delta) if segments else 0.0
        prv_epsilon = None if gaussian is None else gaussian + math.fsum(pure)
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
    for charge in charges:  # subsampled-Gaussian charges only
        key = (float(charge.noise_multiplier), float(charge.sample_rate))
        merged[key] = merged.get(key, 0) + int(charge.steps)
    return [(sigma, rate, steps) for (sigma, rate), steps in sorted(merged.items())]


def _rdp(segments: list[tuple[float, float, int]], pure: list[float], delta: float) -> float:
    """RDP of the Gaussian segments plus the pure releases, summed per order, converted once at ``delta``."""
    if any(sigma <= 0 for sigma, _, _ in segments) or any(not math.isfinite(e) for e in pure):
        return math.inf
    orders = np.asarray(RDP_ORDERS, dtype=float)
    total = np.zeros_like(orders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sigma, rate, steps in segments:
            total += steps * np.asarray(_step_rdp(float(rate), float(sigma)), dtype=float)
        for epsilon in pure:
            total += np.minimum(epsilon, orders * epsilon**2 / 2)
        epsilon, _ = rdp_analysis.get_privacy_spent(orders=RDP_ORDERS, rdp=total.tolist(), delta=delta)
    return float(epsilon)


@functools.lru_cache(maxsize=1024)
def _step_rdp(rate: float, sigma: float) -> tuple[float, ...]:
    """RDP of one subsampled-Gaussian step at every order (Opacus multiplies it by the steps; cached because
    the ledger composes the same few (rate, sigma) pairs again for every scope, partition and request)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=RDP_ORDERS))


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
