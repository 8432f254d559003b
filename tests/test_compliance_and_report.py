"""The gate's verdicts and the report writer."""

import copy
import json
from pathlib import Path

import pytest

from ppml.compliance import NOT_REQUIRED, REQUIREMENTS, evaluate_requirements, failing
from ppml.errors import PPMLError
from ppml.policy import load_policy
from ppml.reporting import roc_svg, write_report
from tests.support import GDPR_POLICY

PASSING_EVIDENCE = {
    "anonymization": {
        "min_class_size": 5,
        "classes": 400,
        "suppressed_share": 0.04,
        "suppressed_records": 40,
        "input_records": 1000,
        "l_diversity": [{"attribute": "occupation", "achieved": 2.0, "satisfied": True}],
        "t_closeness": [],
        "risk_before": {"prosecutor_highest": 1.0},
        "risk_after": {"prosecutor_highest": 0.2},
    },
    "training": {"epsilon": 0.99, "delta": 1e-5, "accountant": "prv"},
    "ledger": {"spent_before": 1.0, "charged": 0.99, "spent_after": 1.99},
    "model_evaluation": {
        "dp": {"accuracy": 0.83, "roc_auc": 0.88, "balanced_accuracy": 0.74},
        "dp_ci": {"balanced_accuracy": [0.72, 0.76], "roc_auc": [0.87, 0.89]},
        "baseline": {"accuracy": 0.80},
        "trivial": {"accuracy": 0.76, "balanced_accuracy": 0.5, "roc_auc": 0.5, "positive_rate": 0.24},
        "group_error_rates": {
            "largest_gap": 0.2,
            "largest_evidenced_gap": 0.1,
            "detail": "largest gap: FNR of 'sex'",
            "attributes": {},
        },
    },
    "privacy_evaluation": {
        "strongest_attack_on_dp_model": {"name": "lira", "auc": 0.51, "tpr_at_low_fpr": 0.01},
        "summary": [],
    },
    "audit": {"epsilon_lower_bound": 0.1, "claimed_epsilon": 0.99, "canaries": 1000, "confidence": 0.95},
    "leakage": {"findings": [], "scanned": ["features", "files", "params"]},
}


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy(GDPR_POLICY).policy


def test_every_requirement_is_judged_and_passes_on_good_evidence(policy) -> None:  # type: ignore[no-untyped-def]
    verdicts = evaluate_requirements(policy, PASSING_EVIDENCE)
    assert [v.name for v in verdicts] == list(REQUIREMENTS)
    assert failing(verdicts) == []
    t = next(v for v in verdicts if v.name == "t_closeness")
    assert t.passed and t.detail == NOT_REQUIRED


@pytest.mark.parametrize(
    ("path", "value", "check"),
    [
        (("anonymization", "min_class_size"), 4, "k_anonymity"),
        (("anonymization", "suppressed_share"), 0.06, "suppression_limit"),
        (("anonymization", "risk_after", "prosecutor_highest"), 0.5, "reidentification_risk"),
        (("training", "epsilon"), 1.01, "epsilon_within_target"),
        (("ledger", "spent_after"), 8.5, "lifetime_budget"),
        (("privacy_evaluation", "strongest_attack_on_dp_model", "auc"), 0.7, "membership_inference_auc"),
        (
            ("privacy_evaluation", "strongest_attack_on_dp_model", "tpr_at_low_fpr"),
            0.2,
            "membership_inference_tpr_at_low_fpr",
        ),
        (("audit", "epsilon_lower_bound"), 2.0, "empirical_epsilon_audit"),
        (("model_evaluation", "dp", "accuracy"), 0.775, "utility_accuracy"),
        (("model_evaluation", "dp", "roc_auc"), 0.7, "utility_roc_auc"),
        (("model_evaluation", "baseline", "accuracy"), 0.95, "utility_gap_vs_baseline"),
        (("model_evaluation", "dp_ci", "balanced_accuracy"), [0.5, 0.5], "utility_balanced_accuracy_above_trivial"),
        (("model_evaluation", "dp_ci", "balanced_accuracy"), [0.515, 0.6], "utility_balanced_accuracy_above_trivial"),
        (("model_evaluation", "dp_ci", "roc_auc"), [0.49, 0.9], "utility_roc_auc_above_trivial"),
        (("model_evaluation", "group_error_rates", "largest_evidenced_gap"), 0.5, "group_error_rate_gap"),
        (("model_evaluation", "group_error_rates"), None, "group_error_rate_gap"),
        (("leakage", "findings"), [{"identifier": "ssn", "location": "params"}], "no_identifier_leakage"),
    ],
)
def test_each_requirement_fails_on_its_own(policy, path, value, check) -> None:  # type: ignore[no-untyped-def]
    evidence = copy.deepcopy(PASSING_EVIDENCE)
    target = evidence
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert failing(evaluate_requirements(policy, evidence)) == [check]


def test_the_trivial_margin_is_the_policys_to_raise_never_to_lower(policy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A policy that asks for more margin refuses a model the default accepts; one that asks for less is refused
    at load time with one line naming the field."""
    import yaml

    stricter = policy.model_copy(
        update={"objectives": policy.objectives.model_copy(update={"min_margin_over_trivial": 0.25})}
    )
    assert failing(evaluate_requirements(policy, PASSING_EVIDENCE)) == []
    assert failing(evaluate_requirements(stricter, PASSING_EVIDENCE)) == ["utility_balanced_accuracy_above_trivial"]
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["objectives"]["min_margin_over_trivial"] = 0.0
    lowered = tmp_path / "lowered.yaml"
    lowered.write_text(yaml.safe_dump(document))
    with pytest.raises(PPMLError, match=r"objectives.min_margin_over_trivial.*greater than or equal to 0.02.*fix:"):
        load_policy(lowered, check_files=False)


def test_report_is_written_atomically_and_refuses_personal_values(tmp_path: Path) -> None:
    evidence = json.loads(json.dumps(PASSING_EVIDENCE))
    with pytest.raises(PPMLError, match="contains a value of a direct identifier"):
        write_report({**evidence, "note": "Jose Ford"}, tmp_path / "r", forbidden_values={"Jose Ford"})
    assert not (tmp_path / "r" / "evidence.json").exists()
    svg = roc_svg({"loss on DP model": {"fpr": [0, 0.5, 1], "tpr": [0, 0.6, 1]}})
    assert svg.startswith("<svg") and "polyline" in svg and "loss on DP model" in svg


def test_a_model_artifact_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path) -> None:
    from ppml.deployment import ServedModel

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(PPMLError, match=r"models:/m-missing: field 'model artifact': the model cannot be loaded.*fix:"):
        ServedModel("models:/m-missing", tracking)
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "MLmodel").write_text("not: [a valid model")
    with pytest.raises(PPMLError, match="the model cannot be loaded"):
        ServedModel(str(broken), tracking)
