"""The f-DP one-run analysis (ppml.evaluation.fdp_audit) on simulated canary observations, without training.

The simulation is the white-box observation model itself: canary i in with probability 1/2, drawn at each of T
steps with probability q, seen through Gaussian noise; the score is the Poisson-mixture likelihood ratio.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppml.evaluation.fdp_audit import (
    EPSILON_ERROR,
    EPSILON_GRID,
    SubsampledGaussian,
    fdp_lower_bound,
    guess_counts,
    power_inverse,
    privacy_profile,
    refutes,
)

FRACTIONS = (0.01, 0.03)


def _observe(q: float, sigma_true: float, sigma_claimed: float, steps: int, m: int, seed: int):
    rng = np.random.default_rng(seed)
    included = rng.random(m) < 0.5
    drawn = rng.random((m, steps)) < q
    x = (included[:, None] & drawn) + rng.normal(0.0, sigma_true, (m, steps))
    scores = np.logaddexp(math.log1p(-q), math.log(q) + (x - 0.5) / sigma_claimed**2).sum(axis=1)
    return guess_counts(scores, included, FRACTIONS)


def test_profile_agrees_with_opacus_epsilon() -> None:
    """delta(epsilon) of the profile is the accountant's: at the accountant's epsilon it is at most delta."""
    mechanism = SubsampledGaussian(0.5, 2.0, 20)
    delta = 1e-5
    epsilon = mechanism.epsilon(delta)
    profile = privacy_profile(mechanism)
    above = np.searchsorted(EPSILON_GRID, epsilon + EPSILON_ERROR)
    assert profile[above] <= delta * 1.05
    assert profile[np.searchsorted(EPSILON_GRID, epsilon - 0.5)] > delta  # and not trivially small below it
    assert np.all(np.diff(profile) <= 1e-12)  # delta(epsilon) decreases


def test_refutes_perfect_guesses_of_a_private_claim_only() -> None:
    tight = power_inverse(np.zeros(1), np.array([0.5]))  # pure 0.5-DP
    assert refutes(tight, 2000, 200, 200, 0.05)
    assert not refutes(tight, 2000, 200, 110, 0.05)  # 55 % right: what 0.5-DP allows (62 %)
    loose = power_inverse(np.zeros(1), np.array([8.0]))
    assert not refutes(loose, 2000, 200, 200, 0.05)  # 8-DP allows near-perfect guessing of 200 canaries
    assert not refutes(tight, 2000, 0, 0, 0.05)


@pytest.mark.parametrize("seed", [0, 1])
def test_honest_observations_never_refute_the_claim(seed: int) -> None:
    q, sigma, steps, m = 0.5, 2.64, 20, 4000
    claimed = SubsampledGaussian(q, sigma, steps)
    epsilon = claimed.epsilon(1e-5)
    bound = fdp_lower_bound(_observe(q, sigma, sigma, steps, m, seed), m, claimed, delta=1e-5, claimed_epsilon=epsilon)
    assert not bound.claim_refuted
    assert 0.4 * epsilon < bound.lower_bound <= epsilon  # and the bound has power: ~0.55 x at epsilon 4


def test_a_third_of_the_noise_is_refuted() -> None:
    q, sigma, steps, m = 0.5, 2.64, 20, 4000
    claimed = SubsampledGaussian(q, sigma, steps)
    epsilon = claimed.epsilon(1e-5)
    outcomes = _observe(q, sigma / 3, sigma, steps, m, seed=3)
    bound = fdp_lower_bound(outcomes, m, claimed, delta=1e-5, claimed_epsilon=epsilon)
    assert bound.claim_refuted and bound.lower_bound > epsilon
