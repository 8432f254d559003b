"""Multi-class labels end to end in the engines: policy, preparation, DP-SGD and the tuned baseline, the macro
metrics with intervals, the trivial-predictor gate at 1/K, macro group error rates, membership inference on the
true-class logit, the black-box and white-box audits; and ``numeric_missing: category``."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from ppml.compliance import utility_gate_verdicts
from ppml.deidentification import SPLIT_BUCKET_COLUMN
from ppml.errors import PPMLError
from ppml.evaluation import (
    AuditSettings,
    WhiteBoxSettings,
    group_error_rates,
    lira_offline_attack,
    loss_threshold_attack,
    run_one_run_audit,
    run_whitebox_audit,
    trivial_margin_verdicts,
    trivial_predictor,
    utility_report,
)
from ppml.policy import load_policy, parse_policy
from ppml.preparation import LABEL_COLUMN, apply_bins, clean_records, quantile_bins
from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig, train_dp, train_non_private
from ppml.training.baseline import BaselineCandidate, single_threaded, tune_baseline
from tests.support import GDPR_POLICY, HIPAA_POLICY

warnings.filterwarnings("ignore", message="Secure RNG turned off")


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """These models are tiny: on a shared box, torch's worker threads cost more than they give (20 s vs 4 s)."""
    with single_threaded():
        yield


def three_classes(n: int, d: int = 8, seed: int = 0, name: str = "mc", shift: float = 2.0) -> TabularSplit:
    """A learnable 3-class problem: class c's records are shifted along feature c (by ``shift``)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.2, 0.5, 0.3]).astype(np.int64)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X[np.arange(n), y] += shift
    return TabularSplit(X, y, tuple(f"f{i}" for i in range(d)), name, n_classes=3)


def softmax_scores(y: np.ndarray, strength: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), 3))
    logits[np.arange(len(y)), y] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def multiclass_document() -> dict:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["schema"]["label"] = {"column": "income"}
    document["schema"]["label_values"] = ["<=50K", ">50K", "unknown"]
    return document


# ----------------------------------------------------------------------------------------------------- policy


def test_bundled_policies_stay_binary_and_a_label_without_positive_value_is_multiclass() -> None:
    for path in (GDPR_POLICY, HIPAA_POLICY):
        roles = load_policy(path).policy.schema_
        assert not roles.is_multiclass and roles.label_classes() == ["not >50K", ">50K"]
    roles = parse_policy(multiclass_document(), "p.yaml").schema_
    assert roles.is_multiclass and roles.label_classes() == ["<=50K", ">50K", "unknown"]
    encoded = roles.encode_label(pd.Series([">50K", "unknown", "<=50K", "other"]))
    assert encoded.tolist() == [1, 2, 0, -1]


def test_a_multiclass_label_needs_its_classes_listed() -> None:
    document = multiclass_document()
    document["schema"]["label_values"] = ["<=50K", ">50K"]
    with pytest.raises(PPMLError) as refused:
        parse_policy(document, "p.yaml")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("p.yaml: field 'schema':")
    assert "label 'income' has no positive_value, so it is multi-class" in message
    assert "fix: list every class in schema.label_values (at least 3)" in message


def test_numeric_missing_category_is_allowed_except_for_quasi_identifiers() -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["schema"]["numeric_missing"] = {"hours_per_week": "category"}
    assert parse_policy(document, "p.yaml").schema_.missing_category_columns() == ["hours_per_week"]
    document["schema"]["numeric_missing"] = {"age": "category"}
    with pytest.raises(PPMLError, match=r"numeric_missing is category for 'age', which is a quasi-identifier; fix:"):
        parse_policy(document, "p.yaml")
    document["schema"]["numeric_missing"] = {"hours_per_week": "median"}
    with pytest.raises(PPMLError, match=r"is 'median'; fix: write drop, category, or a whole number"):
        parse_policy(document, "p.yaml")


# ------------------------------------------------------------------------------------------------- preparation


def anonymized_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    hours = pd.array(rng.integers(20, 60, size=n), dtype="Int64")
    hours[rng.random(n) < 0.1] = pd.NA
    return pd.DataFrame(
        {
            "age": rng.choice(["20-39", "40-59"], size=n),
            "sex": rng.choice(["Female", "Male"], size=n),
            "race": "*",
            "native_country": "*",
            "hours_per_week": hours,
            "income": rng.choice(["<=50K", ">50K", "unknown"], size=n),
            SPLIT_BUCKET_COLUMN: rng.integers(0, 100, size=n),
        }
    )


def test_preparation_encodes_classes_and_bins_a_missing_category() -> None:
    document = multiclass_document()
    document["schema"].update(features=["age", "sex", "hours_per_week"], sensitive_attributes=[])
    document["schema"]["protected_attributes"] = ["sex"]
    document["privacy"].update(l_diversity=[], t_closeness=[])
    document["schema"]["numeric_missing"] = {"hours_per_week": "category"}
    document["release"] = {"default_action": "refuse", "columns": {"hours_per_week": "keep"}}
    policy = parse_policy(document, "p.yaml")
    frame = anonymized_frame()
    cleaned, report = clean_records(frame, policy, max_share_below_k=1.0)
    expected = frame["income"].map({"<=50K": 0, ">50K": 1, "unknown": 2})
    assert cleaned[LABEL_COLUMN].tolist() == expected.tolist()
    hours = cleaned["hours_per_week"]
    assert (hours == "Unknown").sum() == frame["hours_per_week"].isna().sum() > 0
    assert {d.feature: d.decision for d in report.decisions}["hours_per_week"] == "binned"
    frame.loc[3, "income"] = "maybe"
    with pytest.raises(PPMLError, match=r"field 'income': 1 record\(s\) hold a label value that is not in"):
        clean_records(frame, policy, max_share_below_k=1.0)


def test_bins_of_a_column_with_missing_values() -> None:
    values = pd.Series(pd.array([1, 5, None, 9, 12, None, 3], dtype="Int64"))
    binned, edges = quantile_bins(values, 3)
    assert binned.tolist().count("Unknown") == 2 and "Unknown" not in binned[values.notna()].tolist()
    assert apply_bins(values, edges).tolist() == binned.tolist()
    whole = pd.Series([1, 5, 9, 12, 3], dtype="int64")  # without missing values: unchanged behaviour
    assert "Unknown" not in quantile_bins(whole, 3)[0].tolist()


# ---------------------------------------------------------------------------------------------------- training


def test_dp_sgd_and_the_non_private_trainer_learn_three_classes() -> None:
    train, validation = three_classes(600), three_classes(300, seed=1, name="mc/validation")
    config = TrainingConfig(
        model=ModelSpec(kind="logistic"), epochs=2, batch_size=200, learning_rate=0.5, optimizer="sgd", device="cpu"
    )
    dp = DPConfig(target_epsilon=3.0, target_delta=1e-5, accountant="rdp")
    model = train_dp(train, config, dp, validation=validation)
    proba = model.predict_proba(validation.X)
    assert proba.shape == (300, 3) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert model.n_classes == 3 and model.epsilon is not None and model.epsilon <= 3.0 + 1e-6
    assert model.history[-1].validation_accuracy > 0.6 and model.history[-1].validation_auc > 0.75
    reference = train_non_private(train, config, validation=validation)
    assert reference.predict_proba(validation.X).shape == (300, 3)
    with pytest.raises(PPMLError, match=r"labels must be class indices 0..2, found \[3.0\]"):
        TabularSplit(train.X[:2], np.array([0, 3]), train.feature_names, "mc", n_classes=3)


def test_the_tuned_baseline_scores_three_classes() -> None:
    train, validation = three_classes(900), three_classes(300, seed=1)
    grid = [BaselineCandidate("logistic_regression", {"C": 1.0}), BaselineCandidate("mlp", {"max_epochs": 3})]
    tuned = tune_baseline(train, validation, grid=grid)
    proba = tuned.model.predict_proba(validation.X)
    assert proba.shape == (300, 3) and tuned.chosen.validation_accuracy > 0.6
    assert tuned.chosen.validation_roc_auc is not None and tuned.chosen.validation_roc_auc > 0.75


# -------------------------------------------------------------------------------------------------- evaluation


def test_macro_metrics_match_scikit_learn_and_carry_intervals() -> None:
    y = np.random.default_rng(0).choice(3, size=1500, p=[0.2, 0.5, 0.3])
    p = softmax_scores(y, 1.5)
    report = utility_report(y, p, model="dp", groups={"sex": np.where(np.arange(1500) % 2, "F", "M")})
    metrics = report.metrics
    assert report.n_classes == 3 and len(report.class_shares) == 3
    assert metrics["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, p.argmax(axis=1)))
    assert metrics["f1"].value == pytest.approx(f1_score(y, p.argmax(axis=1), average="macro"))
    assert metrics["roc_auc"].value == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    assert metrics["fnr"].value == pytest.approx(1 - metrics["balanced_accuracy"].value)
    for name in ("accuracy", "balanced_accuracy", "roc_auc", "f1", "ece", "fpr", "fnr"):
        estimate = metrics[name]
        assert estimate.ci_low is not None and estimate.ci_low <= estimate.value <= estimate.ci_high, name
    assert report.to_dict()["n_classes"] == 3
    with pytest.raises(PPMLError, match="class probabilities do not sum to 1"):
        utility_report(y, p * 0.5)


def test_the_trivial_gate_is_one_over_k_for_balanced_accuracy() -> None:
    y = np.random.default_rng(0).choice(3, size=1200, p=[0.1, 0.8, 0.1])
    prior = np.tile([0.1, 0.8, 0.1], (len(y), 1))  # the class prior for everyone: 80% accurate, no skill
    trivial = utility_report(y, prior, model="prior")
    assert trivial.metrics["accuracy"].value == pytest.approx(np.mean(y == 1))
    assert trivial.metrics["balanced_accuracy"].value == pytest.approx(1 / 3)
    verdicts = trivial_margin_verdicts(trivial, 0.02)
    assert [v.limit for v in verdicts] == [pytest.approx(1 / 3 + 0.02), pytest.approx(0.52)]
    assert not any(v.passed for v in verdicts)
    skilled = utility_report(y, softmax_scores(y, 2.5), model="dp")
    assert all(v.passed for v in trivial_margin_verdicts(skilled, 0.02))
    summary = trivial_predictor(y, 3)
    assert summary["balanced_accuracy"] == pytest.approx(1 / 3) and summary["n_classes"] == 3
    # the compliance gate reads the level from the evidence: 1/K + margin, not 0.5 + margin
    policy = parse_policy(multiclass_document(), "p.yaml")
    middling = {"accuracy": 0.8, "roc_auc": 0.8, "balanced_accuracy": 0.45}
    utility = {"dp": middling, "dp_ci": {"balanced_accuracy": [0.42, 0.48], "roc_auc": [0.7, 0.9]}, "trivial": summary}
    gate = {v.name: v for v in utility_gate_verdicts(policy, utility)}
    assert gate["utility_balanced_accuracy_above_trivial"].passed  # 0.42 >= 1/3 + 0.02; binary would need 0.52
    assert gate["utility_balanced_accuracy_above_trivial"].limit == pytest.approx(1 / 3 + 0.02)


def test_group_error_rates_are_macro_and_compared_only_with_enough_of_every_class() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(3, size=2400, p=[0.3, 0.4, 0.3])
    groups = np.where(rng.random(2400) < 0.5, "A", "B")
    p = softmax_scores(y, 1.5)
    rates = group_error_rates(utility_report(y, p, groups={"g": groups})).to_dict()["attributes"]["g"]
    for group in ("A", "B"):
        entry = rates["groups"][group]
        assert entry["fnr"]["compared"] and entry["fpr"]["compared"] and len(entry["class_counts"]) == 3
    rare = np.where(y == 0, 0, y)
    rare[np.flatnonzero(y == 0)[40:]] = 1  # 40 records of class 0 overall: below 30 in each group
    few = group_error_rates(utility_report(rare, p, groups={"g": groups})).to_dict()["attributes"]["g"]
    assert not few["groups"]["A"]["fnr"]["compared"] and few["gaps"]["fnr"] is None
    detail = group_error_rates(utility_report(y, p, groups={"g": np.full(len(y), "A")})).describe()
    assert detail.startswith("no attribute has two groups with at least 30 records of every one of the 3 classes")


def test_membership_inference_uses_the_true_class_logit() -> None:
    # a weak signal, few records and many epochs: a target that memorises its training labels
    train, holdout = three_classes(100, d=20, shift=0.5), three_classes(700, d=20, seed=2, shift=0.5)
    config = TrainingConfig(model=ModelSpec(kind="mlp", hidden_sizes=(128,)), epochs=60, batch_size=25, device="cpu")
    target = train_non_private(train, config)
    non_members = holdout.subset(np.arange(100))
    loss = loss_threshold_attack(target, train, non_members, name="target")
    assert loss.roc_auc > 0.7  # the attack sees the memorisation through -CE of the true class
    pool = holdout.subset(np.arange(100, 700))
    lira = lira_offline_attack(
        target,
        train,
        non_members,
        pool,
        lambda split: train_non_private(split, config),
        2,
        min_reference_size=100,
        reference_size=100,
        name="target",
    )
    assert lira.n_reference_models == 2 and lira.roc_auc > 0.7


def test_black_box_and_white_box_audits_run_on_three_classes() -> None:
    train = three_classes(600)
    config = TrainingConfig(model=ModelSpec(kind="logistic"), epochs=2, batch_size=128, device="cpu")
    dp = DPConfig(target_epsilon=1.0, target_delta=1e-5, accountant="rdp")
    settings = AuditSettings(n_canaries=50, epochs=2, batch_size=128, max_base_records=500)
    audit = run_one_run_audit(train, config, dp, settings=settings)
    assert audit.claimed_epsilon <= 1.0 + 1e-6 and not audit.alarm
    whitebox = run_whitebox_audit(train, config, dp, settings=WhiteBoxSettings(n_canaries=20, epochs=1))
    assert whitebox.details["parameters"] == 8 * 3 + 3  # one weight row and bias per class
    assert not whitebox.alarm
