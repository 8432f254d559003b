"""The one-run audit's statistics (Steinke, Nasr & Jagielski 2023), without any training."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ppml.errors import PPMLError
from ppml.evaluation import audit_from_scores, audit_verdict, epsilon_lower_bound, epsilon_p_value, make_canaries


def test_pure_dp_perfect_guessing_has_a_closed_form() -> None:
    # delta = 0 and all r guesses right: p(eps) = q^r, so the bound solves q = beta^(1/r), eps = logit(q).
    for r in (5, 20, 100):
        q = 0.05 ** (1 / r)
        expected = math.log(q / (1 - q))
        assert epsilon_lower_bound(1000, r, r, delta=0.0) == pytest.approx(expected, abs=1e-4)


def test_p_value_at_the_bound_is_the_significance_level() -> None:
    bound = epsilon_lower_bound(1000, 200, 180, delta=1e-5)
    assert epsilon_p_value(1000, 200, 180, bound, 1e-5) < 0.05 <= epsilon_p_value(1000, 200, 180, bound + 1e-3, 1e-5)


def test_chance_level_guessing_refutes_nothing() -> None:
    assert epsilon_lower_bound(1000, 200, 100, delta=1e-5) == 0.0
    assert epsilon_lower_bound(1000, 200, 60, delta=1e-5) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, delta=1e-5) == 0.0


def test_delta_term_weakens_the_bound() -> None:
    assert epsilon_lower_bound(1000, 100, 95, delta=1e-3) < epsilon_lower_bound(1000, 100, 95, delta=0.0)


@settings(max_examples=60, deadline=None)
@given(r=st.integers(1, 300), data=st.data())
def test_bound_is_monotone_in_correct_guesses_and_capped_by_perfect_guessing(r: int, data) -> None:
    v = data.draw(st.integers(0, r - 1))
    m = data.draw(st.integers(r, 3 * r + 10))
    lower = epsilon_lower_bound(m, r, v, delta=1e-5)
    higher = epsilon_lower_bound(m, r, v + 1, delta=1e-5)
    perfect = epsilon_lower_bound(m, r, r, delta=1e-5)
    assert 0.0 <= lower <= higher + 1e-6 <= perfect + 2e-6


@settings(max_examples=30, deadline=None)
@given(r=st.integers(1, 200), data=st.data())
def test_p_value_is_monotone_in_epsilon(r: int, data) -> None:
    v = data.draw(st.integers(0, r))
    eps = sorted(data.draw(st.lists(st.floats(0, 8), min_size=2, max_size=2)))
    assert epsilon_p_value(2 * r, r, v, eps[0], 1e-5) <= epsilon_p_value(2 * r, r, v, eps[1], 1e-5) + 1e-12


def test_bound_is_valid_for_an_exactly_eps_dp_mechanism() -> None:
    """Randomised response on each canary's membership is exactly eps-DP; the audit must refute eps = 1 at most
    5% of the time, with the guess-count sweep included (Bonferroni)."""
    rng = np.random.default_rng(0)
    eps, m, trials = 1.0, 400, 150
    keep = math.exp(eps) / (1 + math.exp(eps))
    alarms, bounds = 0, []
    for _ in range(trials):
        included = rng.random(m) < 0.5
        reported = np.where(rng.random(m) < keep, included, ~included)
        scores = reported + 0.01 * rng.random(m)
        result = audit_from_scores(scores, included, claimed_epsilon=eps, delta=0.0, guess_fractions=(0.1, 0.25, 0.5))
        alarms += result.alarm
        bounds.append(result.lower_bound)
    assert alarms / trials <= 0.05 + 0.03  # 0.05 plus sampling slack over 150 trials
    assert np.mean(bounds) > 0.3  # and it is not vacuous: the mechanism does leak


def test_scores_that_reveal_membership_raise_the_alarm_and_random_ones_do_not() -> None:
    rng = np.random.default_rng(1)
    included = rng.random(1000) < 0.5
    leaky = audit_from_scores(included + rng.normal(0, 0.1, 1000), included, claimed_epsilon=1.0, delta=1e-5)
    assert leaky.alarm and leaky.lower_bound > 3 and not audit_verdict(leaky).passed
    assert leaky.canary_auc == pytest.approx(1.0)
    assert "ALARM" in leaky.message
    calm = audit_from_scores(rng.normal(size=1000), included, claimed_epsilon=1.0, delta=1e-5)
    assert not calm.alarm and calm.lower_bound < 1 and audit_verdict(calm).passed
    payload = json.loads(json.dumps(leaky.to_dict()))
    assert payload["best"]["k_plus"] == payload["best"]["k_minus"]
    assert len(payload["outcomes"]) == 3 and payload["details"]["bonferroni_tests"] == 3


def test_canaries_have_their_own_column_and_fair_coins() -> None:
    base = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    canaries = make_canaries(base, 400, scale=5.0, rng=np.random.default_rng(2))
    assert canaries.X.shape == (400, 404) and canaries.anchor.shape == (404,)
    np.testing.assert_allclose(canaries.X[:, :4], np.tile(base.mean(axis=0), (400, 1)), rtol=1e-6)
    np.testing.assert_array_equal(canaries.X[:, 4:], 5.0 * np.eye(400, dtype=np.float32))
    assert 150 < canaries.included.sum() < 250 and 150 < canaries.y.sum() < 250


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: epsilon_lower_bound(10, 5, 6, delta=1e-5), "m/r/v"),
        (lambda: epsilon_lower_bound(10, 11, 5, delta=1e-5), "m/r/v"),
        (lambda: epsilon_lower_bound(10, 5, 4, delta=1e-5, confidence=1.0), "confidence"),
        (lambda: audit_from_scores(np.zeros(5), np.zeros(4), claimed_epsilon=1, delta=1e-5), "scores"),
        (lambda: audit_from_scores(np.zeros(5), np.zeros(5), claimed_epsilon=-1, delta=1e-5), "claimed_epsilon"),
        (
            lambda: audit_from_scores(np.zeros(5), np.zeros(5), claimed_epsilon=1, delta=1e-5, guess_fractions=(0.7,)),
            "guess_fractions",
        ),
        (lambda: make_canaries(np.zeros((3, 2)), 5, scale=5.0, rng=np.random.default_rng()), "n_canaries"),
    ],
)
def test_bad_audit_input_is_refused(call, field: str) -> None:
    with pytest.raises(PPMLError, match=field):
        call()
