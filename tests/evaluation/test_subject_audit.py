"""The white-box audit of the *user-level* trainer (privacy unit ``subject``): canaries are one-record subjects.

The record-level audit tests ``train_dp``; a subject-unit policy trains with ``train_user_level`` (per-subject
clipped sums, subjects sampled), so its claim -- sigma, the subject sample rate and T steps give epsilon per
person -- is audited through that trainer's own step.
"""

from __future__ import annotations

import numpy as np
import pytest

from ppml.errors import PPMLError
from ppml.evaluation.audit_whitebox import WhiteBoxSettings, run_whitebox_audit, whitebox_verdict
from ppml.evaluation.planted_bugs import PlantedBug, planted_bug
from ppml.training import DPConfig, ModelSpec, TrainingConfig

CONFIG = TrainingConfig(model=ModelSpec("mlp", (32,)), learning_rate=0.1, optimizer="sgd", seed=0, device="cpu")


def _audit(adult, bug: PlantedBug | None, seed: int, records_per_subject: int = 3):  # type: ignore[no-untyped-def]
    rows = adult.rows(np.arange(2400))
    subjects = np.arange(2400) // records_per_subject  # every person has several records
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, dp_seed=200 + seed)
    settings = WhiteBoxSettings(n_canaries=2000, max_base_records=1200, seed=seed)
    fault = planted_bug(bug) if bug else None
    return run_whitebox_audit(rows, CONFIG, dp, settings=settings, fault=fault, subjects=subjects)


def test_honest_user_level_run_passes_at_the_subject_rate(adult) -> None:  # type: ignore[no-untyped-def]
    result = _audit(adult, None, seed=0)
    assert not result.alarm and whitebox_verdict(result).passed, result.message
    details = result.details
    assert details["privacy_unit"] == "subject"
    # the claim audited is the user-level one: the rate over subjects (the real ones + one per canary)
    assert details["sample_rate"] == pytest.approx(0.5)
    assert result.mechanism["sampling_rate"]["claimed_rate"] == pytest.approx(0.5)
    assert result.max_achievable_bound > 2 and result.n_canaries == 2000


@pytest.mark.parametrize("bug", [PlantedBug.NOISE_X0, PlantedBug.NOISE_X0_3])
def test_planted_noise_bug_in_the_user_level_trainer_is_caught(adult, bug: PlantedBug) -> None:  # type: ignore[no-untyped-def]
    result = _audit(adult, bug, seed=1)
    assert result.alarm and not whitebox_verdict(result).passed, result.message
    assert result.lower_bound > result.claimed_epsilon


def test_subjects_must_match_the_rows(adult) -> None:  # type: ignore[no-untyped-def]
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5)
    with pytest.raises(PPMLError, match="one subject per row"):
        run_whitebox_audit(adult.rows(np.arange(100)), CONFIG, dp, subjects=np.arange(99))
