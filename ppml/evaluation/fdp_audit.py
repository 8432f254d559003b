"""f-DP analysis of a one-run audit, against the accountant's whole privacy profile.

Steinke, Nasr & Jagielski's one-run theorem tests one (epsilon, delta) point, and for Gaussian noise the
guesses of even a perfect adversary rarely refute it: at a claimed epsilon of 4 it certified about 0.37 x the
claim. Mahloujifar, Melis & Chaudhuri (2024, "Auditing f-differential privacy in one run") test a whole
trade-off curve f instead: if the mechanism is f-DP with respect to each canary, then, with ``r_i`` and ``h_i``
the probabilities that a uniformly chosen canary is guessed right / wrong while at least i guesses are right,

    h_i >= power_inverse(r_i),    r_i - r_{i+1} = i / (c' - i) * (h_i - h_{i+1}),

and the smallest mass those constraints allow for "at least c of c' guesses right with probability >= tau"
must fit into ``c' / m``; when it does not, the outcome refutes f-DP at level tau.

The curve tested is the **claimed mechanism's own**: a DP-SGD run claims to be the Poisson-subsampled Gaussian
mechanism with rate q, noise multiplier sigma and T steps, whose privacy profile delta(epsilon) Opacus' PRV
accountant computes (with its error terms added pessimistically, so the curve tested is never more private than
the claim). Its trade-off curve is the envelope of the (epsilon, delta(epsilon)) lines. The reported lower bound
is the epsilon (at the claimed delta) of the most private member of the same family -- same q and T, noise sigma'
-- that the outcome refutes; the claim itself is rejected exactly when sigma' >= sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

EPSILON_GRID = np.linspace(0.0, 30.0, 601)
DELTA_ERROR = 1e-9  # added to every delta(epsilon) of the profile: the PRV discretisation's error, pessimistically
EPSILON_ERROR = 0.05  # the profile is read at epsilon - EPSILON_ERROR: ditto
NOISE_SEARCH = (0.25, 40.0)  # the family searched: sigma' in [sigma / 4, 40 sigma]
BISECTION_STEPS = 9


@dataclass(frozen=True)
class SubsampledGaussian:
    """The mechanism a DP-SGD run claims to be: Poisson rate q, noise multiplier sigma, T steps."""

    sample_rate: float
    noise_multiplier: float
    steps: int

    def with_noise(self, noise_multiplier: float) -> SubsampledGaussian:
        return SubsampledGaussian(self.sample_rate, float(noise_multiplier), self.steps)

    def epsilon(self, delta: float, least_noise: float | None = None) -> float:
        """Upper bound on epsilon at ``delta`` (PRV, the discretisation errors added)."""
        composed = _composed(self, least_noise)
        return float(composed.compute_epsilon(delta, DELTA_ERROR, EPSILON_ERROR)[2])


@lru_cache(maxsize=64)
def _domain(sample_rate: float, steps: int, least_noise: float):  # type: ignore[no-untyped-def]
    """A discretisation domain safe (Gopi et al.'s truncation bound) for every noise >= ``least_noise``: a larger
    noise has lighter privacy-loss tails. Computing it is the slow part (an RDP bound), so the family shares one."""
    from opacus.accountants.analysis.prv import Domain, PoissonSubsampledGaussianPRV, compute_safe_domain_size

    prv = PoissonSubsampledGaussianPRV(sample_rate, least_noise)
    size = compute_safe_domain_size(
        prvs=[prv], max_self_compositions=[steps], eps_error=EPSILON_ERROR, delta_error=DELTA_ERROR
    )
    mesh = EPSILON_ERROR / math.sqrt(steps * math.log(12 / DELTA_ERROR) / 2)
    return Domain.create_aligned(-size, size, mesh)


@lru_cache(maxsize=256)
def _composed(mechanism: SubsampledGaussian, least_noise: float | None = None):  # type: ignore[no-untyped-def]
    """The T-fold composition of the mechanism's privacy random variable (Opacus' PRV discretisation)."""
    from opacus.accountants.analysis.prv import (
        PoissonSubsampledGaussianPRV,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        discretize,
    )

    least = mechanism.noise_multiplier if least_noise is None else min(least_noise, mechanism.noise_multiplier)
    domain = _domain(mechanism.sample_rate, mechanism.steps, least)
    prv = PoissonSubsampledGaussianPRV(mechanism.sample_rate, mechanism.noise_multiplier)
    truncated = TruncatedPrivacyRandomVariable(prv, domain.t_min, domain.t_max)
    return compose_heterogeneous(dprvs=[discretize(truncated, domain)], num_self_compositions=[mechanism.steps])


@lru_cache(maxsize=256)
def privacy_profile(mechanism: SubsampledGaussian, least_noise: float | None = None) -> np.ndarray:
    """Upper bounds on delta(epsilon) over ``EPSILON_GRID`` (numerical composition of the PRVs, Gopi et al. 2021).

    ``least_noise``: the smallest noise multiplier the caller will ask about for this rate and T (one shared
    domain); defaults to the mechanism's own."""
    composed = _composed(mechanism, least_noise)
    t, pmf = composed.domain.ts, composed.pmf
    tail = np.flip(np.flip(pmf).cumsum())  # P[L >= t_j]
    tail_scaled = np.flip(np.flip(pmf * np.exp(-t)).cumsum())  # E[e^-L; L >= t_j]
    at = np.maximum(EPSILON_GRID - EPSILON_ERROR, 0.0)
    index = np.searchsorted(t, at)
    inside = index < len(t)
    deltas = np.zeros_like(at)
    deltas[inside] = tail[index[inside]] - np.exp(at[inside]) * tail_scaled[index[inside]]
    return np.clip(deltas, 0.0, None) + DELTA_ERROR


def power_inverse(deltas: np.ndarray, epsilons: np.ndarray = EPSILON_GRID) -> Callable[[float], float]:
    """``y -> `` the smallest false-positive rate at which a test can reach power y under the profile.

    For one (epsilon, delta) line the power at level a is ``min(1, delta + e^eps a, 1 - e^-eps (1 - delta - a))``;
    the profile's power is the minimum over its lines, so the inverse is the maximum of the lines' inverses.
    Using a finite grid of lines keeps only some constraints: the curve is less private than the claim, never more.
    """
    eps = np.asarray(epsilons, dtype=float)
    dlt = np.asarray(deltas, dtype=float)
    scale_down, scale_up = np.exp(-eps), np.exp(eps)

    def inverse(y: float) -> float:
        if y <= 0:
            return 0.0
        lines = np.maximum((y - dlt) * scale_down, 1.0 - dlt - scale_up * (1.0 - y))
        return float(max(0.0, lines.max()))

    return inverse


def refutes(inverse: Callable[[float], float], m: int, guesses: int, correct: int, alpha: float) -> bool:
    """True when "``correct`` of ``guesses`` right among m canaries" has probability < alpha under the curve."""
    if guesses <= 0 or correct <= 0:
        return False
    capacity = guesses / m
    right = alpha * correct / m
    wrong = alpha * (guesses - correct) / m
    for i in range(correct - 1, -1, -1):
        wrong_next = max(wrong, inverse(right))
        right += i / (guesses - i) * (wrong_next - wrong)
        wrong = wrong_next
        if right + wrong > capacity:
            return True
    return right + wrong > capacity


def guess_counts(scores: np.ndarray, included: np.ndarray, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """(guesses, correct) for each fraction: the top k scores guessed in, the bottom k guessed out."""
    scores = np.asarray(scores, dtype=float)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    order = np.argsort(scores, kind="stable")
    out = []
    for fraction in fractions:
        k = max(1, min(m // 2, round(fraction * m)))
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        out.append((2 * k, correct))
    return out


@dataclass(frozen=True)
class FdpBound:
    lower_bound: float
    claim_refuted: bool
    noise_at_bound: float | None
    guesses: int
    correct: int
    alpha: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fdp_lower_bound(
    outcomes: Sequence[tuple[int, int]],
    m: int,
    claimed: SubsampledGaussian,
    *,
    delta: float,
    claimed_epsilon: float | None = None,
    confidence: float = 0.95,
) -> FdpBound:
    """The epsilon of the most private family member that some outcome refutes (Bonferroni over outcomes)."""
    alpha = (1 - confidence) / max(1, len(outcomes))

    def refuted_by(noise: float) -> tuple[int, int] | None:
        inverse = power_inverse(privacy_profile(claimed.with_noise(noise), least_noise))
        return next(((g, c) for g, c in outcomes if refutes(inverse, m, g, c, alpha)), None)

    sigma = claimed.noise_multiplier
    least_noise = sigma * NOISE_SEARCH[0]
    claim_refuted = refuted_by(sigma) is not None
    low, high = sigma * NOISE_SEARCH[0], sigma * NOISE_SEARCH[1]
    if refuted_by(high) is None:  # not even the most private member is refuted: nothing certified
        g, c = max(outcomes, key=lambda o: o[1] / o[0])
        return FdpBound(0.0, claim_refuted, None, g, c, alpha)
    if refuted_by(low) is not None:  # refuted down to the search's edge: report the edge
        high = low
    for _ in range(BISECTION_STEPS if low < high else 0):  # invariant: low not refuted, high refuted
        middle = math.sqrt(low * high)
        low, high = (low, middle) if refuted_by(middle) is not None else (middle, high)
    g, c = refuted_by(high) or outcomes[0]
    bound = claimed.with_noise(high).epsilon(delta, least_noise)
    # the claim's own epsilon may come from another accountant (RDP) or another discretisation: the verdict is
    # whether the claimed curve is refuted, and the reported bound is kept on the same side of the claim
    if claimed_epsilon is not None:
        bound = max(bound, claimed_epsilon) if claim_refuted else min(bound, claimed_epsilon)
    return FdpBound(float(bound), claim_refuted, float(high), g, c, alpha)


def max_certifiable(
    m: int,
    fractions: Sequence[float],
    claimed: SubsampledGaussian,
    *,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """The bound if every guess were right: the most that m canaries can certify for this mechanism family."""
    ks = [max(1, min(m // 2, round(f * m))) for f in fractions]
    perfect = [(2 * k, 2 * k) for k in ks]
    return fdp_lower_bound(perfect, m, claimed, delta=delta, confidence=confidence).lower_bound
