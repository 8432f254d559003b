"""The non-private baseline is tuned, not a straw man: it beats the same data trained with the DP model's settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ppml.errors import PPMLError
from ppml.evaluation import utility_report
from ppml.policy import load_policy
from ppml.training import TabularSplit, train_non_private
from ppml.training.baseline import BaselineCandidate, single_threaded, tune_baseline
from tests.evaluation.conftest import load_adult
from tests.support import GDPR_POLICY


@pytest.fixture(scope="module")
def adult_splits() -> dict[str, TabularSplit]:
    """16,000 Adult records, 70/15/15: train, validation (tuning), test (the comparison)."""
    adult = load_adult(16000)
    order = np.random.default_rng(0).permutation(len(adult.y))
    cuts = np.split(order, [int(0.7 * len(order)), int(0.85 * len(order))])
    return {name: adult.rows(rows) for name, rows in zip(("train", "validation", "test"), cuts, strict=True)}


@pytest.fixture(scope="module")
def tuned(adult_splits):  # type: ignore[no-untyped-def]
    return tune_baseline(adult_splits["train"], adult_splits["validation"], hidden_sizes=(64,), seed=7)


def test_tuned_baseline_beats_the_dp_models_settings_on_adult(adult_splits, tuned) -> None:  # type: ignore[no-untyped-def]
    from ppml_assets.common import training_configs

    test = adult_splits["test"]
    straw_config = training_configs(load_policy(GDPR_POLICY))[0]  # what non_private_baseline used to train
    with single_threaded():
        straw = train_non_private(adult_splits["train"], straw_config, validation=adult_splits["validation"])
    tuned_report = utility_report(test.y, tuned.model.predict_proba(test.X), n_resamples=0)
    straw_report = utility_report(test.y, straw.predict_proba(test.X), n_resamples=0)
    # Paired on the same 2,400 test records.
    assert tuned_report.value("accuracy") > straw_report.value("accuracy") + 0.005
    assert tuned_report.value("roc_auc") > straw_report.value("roc_auc")
    assert tuned_report.value("f1") > straw_report.value("f1")


def test_the_choice_is_the_best_candidate_on_validation_and_is_reported(adult_splits, tuned) -> None:  # type: ignore[no-untyped-def]
    assert {c.family for c in tuned.candidates} == {"logistic_regression", "gradient_boosting", "mlp"}
    assert tuned.chosen.validation_accuracy == max(c.validation_accuracy for c in tuned.candidates)
    validation = adult_splits["validation"]
    measured = float(((tuned.model.predict_proba(validation.X) >= 0.5) == validation.y).mean())
    assert measured == pytest.approx(tuned.chosen.validation_accuracy)
    summary = tuned.to_dict()
    assert summary["family"] == tuned.chosen.family and summary["settings"] == tuned.chosen.settings
    assert len(json.dumps(summary)) < 5000  # aggregates only: no weights, no per-record values


def test_refit_trains_the_chosen_settings_on_another_split(adult_splits, tuned) -> None:  # type: ignore[no-untyped-def]
    """LiRA's reference models for the baseline are trained like it: same family, same settings, other data."""
    reference = tuned.refit(adult_splits["validation"])
    assert reference.family == tuned.chosen.family
    p = reference.predict_proba(adult_splits["test"].X)
    assert p.shape == (adult_splits["test"].n,) and p.min() >= 0 and p.max() <= 1
    assert not np.allclose(p, tuned.model.predict_proba(adult_splits["test"].X))


def test_bad_input_is_one_clear_error(adult_splits) -> None:  # type: ignore[no-untyped-def]
    train = adult_splits["train"]
    one_class = TabularSplit(train.X[:100], np.zeros(100, np.int64), train.feature_names, "adult/validation")
    with pytest.raises(PPMLError, match=r"adult/validation: field 'y'.*one class.*fix:"):
        tune_baseline(train, one_class)
    with pytest.raises(PPMLError, match="unknown model family"):
        BaselineCandidate("random_forest", {})  # type: ignore[arg-type]
