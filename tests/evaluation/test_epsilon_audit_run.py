"""The one-run audit on real DP-SGD training (ppml.training.train_dp): honest runs pass, broken ones alarm."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from ppml.errors import PPMLError
from ppml.evaluation import AuditSettings, audit_verdict, run_one_run_audit
from ppml.training import DPConfig, ModelSpec, TrainingConfig, train_non_private

# The production-like configuration whose DP claim is audited (the audit run keeps its model spec and seed).
CONFIG = TrainingConfig(
    model=ModelSpec("mlp", (64,)), epochs=4, batch_size=512, learning_rate=0.1, optimizer="sgd", seed=7, device="cpu"
)
SETTINGS = AuditSettings(n_canaries=500, max_base_records=3000)


@pytest.fixture(scope="module")
def train_split(adult):
    return adult.rows(np.arange(0, 3000))


@pytest.mark.parametrize("seed", [0, 1])
def test_broken_dp_without_noise_is_caught(train_split, seed: int, caplog) -> None:
    """Done-when: noise multiplier 0 while the accountant still claims epsilon = 1 raises the alarm."""
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, noise_multiplier_override=0.0, dp_seed=seed)
    with caplog.at_level(logging.ERROR):
        result = run_one_run_audit(train_split, CONFIG, dp, settings=AuditSettings(n_canaries=500, seed=seed))
    assert result.claimed_epsilon == pytest.approx(1.0, abs=0.05)
    assert result.alarm and result.lower_bound > 2.0, result.to_dict()
    verdict = audit_verdict(result)
    assert not verdict.passed and "ALARM" in verdict.detail
    assert result.details["noise_multiplier_override"] == 0.0
    json.dumps(result.to_dict())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_honest_dp_at_the_claimed_epsilon_raises_no_alarm(train_split, seed: int) -> None:
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=100 + seed)
    result = run_one_run_audit(train_split, CONFIG, dp, settings=AuditSettings(n_canaries=500, seed=seed))
    assert not result.alarm and result.lower_bound < result.claimed_epsilon
    assert audit_verdict(result).passed
    assert result.details["noise_multiplier"] > 0.5


@pytest.mark.slow
def test_partial_noise_far_below_the_claim_is_caught(train_split) -> None:
    """A subtler bug: a tenth of the calibrated noise (the accountant still says epsilon = 1)."""
    calibrated = run_one_run_audit(
        train_split, CONFIG, DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=7), settings=SETTINGS
    ).details["noise_multiplier"]
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, noise_multiplier_override=calibrated / 10, dp_seed=7)
    result = run_one_run_audit(train_split, CONFIG, dp, settings=AuditSettings(n_canaries=1000))
    assert result.alarm and result.lower_bound > 1.5, result.to_dict()


def test_audit_refuses_non_private_training_and_too_little_data(adult) -> None:
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5)

    def not_dp(split, config, _dp):
        return train_non_private(split, config)

    with pytest.raises(PPMLError, match="no epsilon"):
        run_one_run_audit(
            adult.rows(np.arange(600)), CONFIG, dp, settings=AuditSettings(n_canaries=20), train_fn=not_dp
        )
    with pytest.raises(PPMLError, match="batch size"):
        run_one_run_audit(adult.rows(np.arange(100)), CONFIG, dp, settings=SETTINGS)
