"""Membership-inference attacks: metric definitions, the attacks on real models, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

from ppml.errors import PPMLError
from ppml.evaluation import (
    attack_metrics,
    check_mia_limits,
    lira_offline_attack,
    loss_threshold_attack,
    mia_verdicts,
    partition_holdout,
    write_roc_curves,
)
from ppml.evaluation.membership_inference import ROC_POINTS


def test_metrics_on_known_score_sets() -> None:
    perfect = attack_metrics(np.arange(10, 20), np.arange(0, 10), attack="t")
    assert perfect.roc_auc == 1.0 and perfect.advantage == 1.0 and perfect.tpr_at(0.001) == 1.0
    # One non-member scores above every member: at FPR 10% all members are found, at FPR < 10% none.
    one_fp = attack_metrics(np.arange(10, 20), np.r_[np.arange(0, 9), 100], attack="t")
    assert one_fp.tpr_at(0.05) == 0.0 and one_fp.tpr_at(0.1) == 1.0
    assert one_fp.roc_auc == pytest.approx(0.9)
    # Identical scores everywhere: the attack is a coin.
    tied = attack_metrics(np.zeros(50), np.zeros(50), attack="t")
    assert tied.roc_auc == pytest.approx(0.5) and tied.advantage == 0.0 and tied.tpr_at(0.01) == 0.0


def test_random_scores_give_chance_and_the_curve_is_downsampled(tmp_path) -> None:
    rng = np.random.default_rng(0)
    result = attack_metrics(rng.normal(size=5000), rng.normal(size=5000), attack="t")
    assert abs(result.roc_auc - 0.5) < 0.02
    assert result.tpr_at(0.01) < 0.03
    assert len(result.roc_fpr) <= ROC_POINTS and len(result.roc_fpr) == len(result.roc_tpr)
    assert result.roc_fpr[0] == 0.0 and result.roc_fpr[-1] == 1.0 and result.roc_tpr[-1] == 1.0
    assert np.all(np.diff(result.roc_fpr) >= 0) and np.all(np.diff(result.roc_tpr) >= 0)
    payload = json.loads(json.dumps(result.to_dict()))
    assert set(payload["tpr_at_fpr"]) == {"0.001", "0.01"}
    lines = write_roc_curves([result], tmp_path / "roc.csv").read_text().splitlines()
    assert lines[0] == "attack,model,fpr,tpr" and len(lines) == len(result.roc_fpr) + 1


def _forest(X: np.ndarray, y: np.ndarray, seed: int = 0) -> RandomForestClassifier:
    """Fully grown trees memorise their training records: a fast, reliably over-fitted target."""
    return RandomForestClassifier(n_estimators=50, random_state=seed, n_jobs=1).fit(X, y)


def test_loss_attack_separates_an_overfit_model_from_a_regularised_one(adult, as_model) -> None:
    members, non_members = np.arange(0, 400), np.arange(3000, 3400)
    overfit = as_model(_forest(adult.X[members], adult.y[members]))
    result = loss_threshold_attack(overfit, adult.rows(members), adult.rows(non_members), name="overfit")
    assert result.n_members == result.n_non_members == 400
    assert result.roc_auc > 0.62 and result.advantage > 0.2

    big = np.arange(0, 1500)
    regularised = as_model(LogisticRegression(C=0.05, max_iter=500).fit(adult.X[big], adult.y[big]))
    calm = loss_threshold_attack(regularised, adult.rows(big), adult.rows(np.arange(3000, 4500)), name="lr")
    assert calm.roc_auc < 0.55

    verdicts = mia_verdicts([result, calm], max_auc=0.6, max_tpr_at_low_fpr=0.05, low_fpr=0.01)
    assert [v.passed for v in verdicts[:1]] == [False] and verdicts[2].passed
    assert all(isinstance(v.measured, float) for v in verdicts)


def test_members_and_non_members_are_balanced(adult, as_model) -> None:
    model = as_model(LogisticRegression(max_iter=300).fit(adult.X[:1000], adult.y[:1000]))
    result = loss_threshold_attack(model, adult.rows(np.arange(1000)), adult.rows(np.arange(5000, 5400)))
    assert result.n_members == result.n_non_members == 400


def test_lira_is_stronger_than_loss_at_low_fpr_on_an_overfit_model(adult, as_model) -> None:
    members = np.arange(0, 400)
    holdout = adult.rows(np.arange(2000, 6000))
    non_members, pool = partition_holdout(holdout, 400, seed=0)
    target = as_model(_forest(adult.X[members], adult.y[members]))

    def train_reference(split):
        assert len(split.y) == 400  # one disjoint slice of the pool per reference model, as large as the target's
        return as_model(_forest(split.X, split.y, seed=1))

    lira = lira_offline_attack(
        target, adult.rows(members), non_members, pool, train_reference, n_reference_models=4, name="overfit"
    )
    loss = loss_threshold_attack(target, adult.rows(members), non_members, name="overfit")
    assert lira.n_reference_models == 4 and lira.details["reference_size"] == 400
    assert lira.roc_auc > loss.roc_auc + 0.03 and lira.roc_auc > 0.7
    assert lira.tpr_at(0.01) > 0.04 > loss.tpr_at(0.01)
    json.dumps(lira.to_dict())


def test_too_few_records_for_reference_models_names_numbers_and_fix(adult, as_model) -> None:
    pool = adult.rows(np.arange(0, 500))
    called = []

    def train_reference(split):
        called.append(len(split.y))
        raise AssertionError("must not train when the pool is too small")

    with pytest.raises(PPMLError) as error:
        lira_offline_attack(
            as_model(None), pool, pool, pool, train_reference, n_reference_models=4, min_reference_size=200
        )
    message = str(error.value)
    assert "4 x 200 = 800" in message and "has 500" in message and "at most 2" in message
    assert called == []
    with pytest.raises(PPMLError, match="n_reference_models"):
        lira_offline_attack(as_model(None), pool, pool, pool, train_reference, n_reference_models=0)


@pytest.mark.parametrize(
    ("auc", "tpr", "fpr", "field"),
    [
        (0.4, 0.05, 0.01, "max_membership_inference_auc"),
        (1.2, 0.05, 0.01, "max_membership_inference_auc"),
        (0.6, 0.05, 0.0, "low_fpr"),
        (0.6, 0.05, 1.0, "low_fpr"),
        (0.6, 0.0, 0.01, "tpr_at_low_fpr"),
    ],
)
def test_limits_out_of_range_are_refused(auc: float, tpr: float, fpr: float, field: str) -> None:
    with pytest.raises(PPMLError, match=field):
        check_mia_limits(auc, tpr, fpr)
    result = attack_metrics(np.ones(3), np.zeros(3), attack="t")
    with pytest.raises(PPMLError, match=field):
        mia_verdicts([result], max_auc=auc, max_tpr_at_low_fpr=tpr, low_fpr=fpr)
