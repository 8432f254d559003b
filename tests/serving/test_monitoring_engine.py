"""Serving monitoring's engine: references, drift, feedback accuracy with suppression, age, and its policy fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ppml.errors import PPMLError
from ppml.serving.monitoring import (
    RETRAIN,
    LogAggregates,
    MonitoringSettings,
    input_reference,
    input_reference_of,
    monitoring_report,
    score_reference,
    trained_as_of,
)
from tests.graph_support import write_policy

SETTINGS = MonitoringSettings(
    input_psi_threshold=0.2,
    prediction_psi_threshold=0.2,
    min_serving_rows=100,
    min_feedback_rows=50,
    min_group_rows=20,
    max_model_age_days=14,
    min_accuracy=0.75,
)
REFERENCE = {"rows": 1000, "counts": {"age": {"20-39": 500, "40-59": 400, "60+": 100}, "sex": {"F": 400, "M": 600}}}
SCORES = score_reference(np.linspace(0.0, 0.99, 1000))


def _stream(n: int, old: bool = False, feedback_every: int = 0, wrong: bool = False) -> LogAggregates:
    """n released rows with the reference's shares (or all in the oldest age group), some with their label."""
    rng = np.random.default_rng(0)
    aggregates = LogAggregates()
    for i in range(n):
        age = "60+" if old else str(rng.choice(["20-39", "40-59", "60+"], p=[0.5, 0.4, 0.1]))
        sex = "F" if i % 10 < 4 else "M"
        score = float(rng.uniform(0, 0.99))
        predicted = int(score >= 0.5)
        label = None
        if feedback_every and i % feedback_every == 0:
            label = 1 - predicted if wrong else predicted
        aggregates.add({"age": age, "sex": sex}, score, predicted, label, ["sex", "race"])
    return aggregates


def test_references_are_counts_of_the_released_labels() -> None:
    X = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0]], dtype=np.float32)
    assert input_reference(X, ["age=20-39", "age=40-59", "sex=F"]) == {
        "rows": 3,
        "counts": {"age": {"20-39": 2, "40-59": 1}, "sex": {"F": 2}},
    }
    scores = score_reference([0.05, 0.55, 0.95, 1.0])
    assert scores["counts"]["0"] == 1 and scores["counts"]["9"] == 2 and scores["positive_rate"] == 0.75
    with pytest.raises(PPMLError, match="no scores"):
        score_reference([])
    with pytest.raises(PPMLError, match=r"field 'serving/preprocessing\.json reference'") as caught:
        input_reference_of({"format": 1}, "m v1")
    assert "\n" not in str(caught.value) and "fix:" in str(caught.value)


def test_a_steady_stream_asks_for_nothing_and_a_shifted_one_for_reevaluation() -> None:
    steady = monitoring_report(_stream(2000, feedback_every=10), REFERENCE, SCORES, SETTINGS, age_days=1.0)
    assert steady["input_drift"]["max_psi"] < 0.05 and steady["prediction_drift"]["status"] == "stable"
    assert steady["accuracy"]["accuracy"] == 1.0 and steady["accuracy"]["labels"] == 200
    assert steady["actions"] == {}
    shifted = monitoring_report(_stream(2000, old=True), REFERENCE, SCORES, SETTINGS, age_days=1.0)
    assert shifted["input_drift"]["drifted_features"] == ["age"]
    assert "input drift in age" in shifted["actions"]["reevaluate"][0]
    assert shifted["accuracy"]["status"] == "not enough feedback (0 labels < 50)"


def test_too_few_predictions_are_not_judged_for_drift() -> None:
    report = monitoring_report(_stream(99, old=True), REFERENCE, SCORES, SETTINGS, age_days=1.0)
    assert report["input_drift"] is None and report["drift_status"] == "not enough predictions (99 rows < 100)"
    assert report["actions"] == {}


def test_low_accuracy_or_an_old_version_asks_for_retraining_and_small_groups_are_suppressed() -> None:
    stream = _stream(400, feedback_every=4, wrong=True)  # 100 labelled, every one wrong
    stream.add({"age": "60+", "sex": "F", "race": "Other"}, 0.9, 1, 0, ["sex", "race"])  # a group of one
    report = monitoring_report(stream, REFERENCE, SCORES, SETTINGS, age_days=30.0)
    accuracy = report["accuracy"]
    assert accuracy["accuracy"] == 0.0 and accuracy["status"] == "below objective" and accuracy["labels"] == 101
    assert {(g["attribute"], g["group"]) for g in accuracy["groups"]} == {("sex", "F"), ("sex", "M")}
    assert accuracy["groups_suppressed"] == 1 and "Other" not in str(accuracy["groups"])
    assert sum(g["n"] for g in accuracy["groups"]) == 101
    assert report["age"]["status"] == "too old"
    assert len(report["actions"][RETRAIN]) == 2


def test_missing_score_reference_is_said() -> None:
    report = monitoring_report(_stream(200), REFERENCE, None, SETTINGS, age_days=0.0)
    assert report["prediction_drift"]["status"] == "no evaluation scores recorded for this version"


def test_the_trained_as_of_day_comes_from_the_lineage_tags() -> None:
    assert trained_as_of({"ppml.partitions": "as-of 2026-04-30 (90 days)"}) == "2026-04-30"
    assert trained_as_of({"ppml.window": "2026-02-01..2026-04-30"}) == "2026-04-30"
    assert trained_as_of({}) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prediction_psi_threshold", 0),
        ("serving_window_days", 0),
        ("min_serving_rows", 0),
        ("min_feedback_rows", -1),
        ("min_group_rows", 0),
        ("max_model_age_days", 0),
    ],
)
def test_bad_monitoring_thresholds_are_one_line_errors(tmp_path: Path, field: str, value: object) -> None:
    from ppml.policy import load_policy

    with pytest.raises(PPMLError, match=f"field 'monitoring.{field}'") as caught:
        load_policy(write_policy(tmp_path, **{f"monitoring__{field}": value}))
    assert "\n" not in str(caught.value) and "fix:" in str(caught.value)


def test_default_monitoring_thresholds(tmp_path: Path) -> None:
    from ppml.policy import load_policy

    policy = load_policy(write_policy(tmp_path)).policy
    settings = MonitoringSettings.from_policy(policy)
    assert settings.min_group_rows == 20 and settings.max_model_age_days == 14 and settings.min_serving_rows == 500
    assert settings.min_accuracy == policy.objectives.min_accuracy


def test_the_report_section_renders_every_state() -> None:
    from jinja2 import Environment, FileSystemLoader

    from ppml.reporting import TEMPLATES

    template = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True).get_template(
        "serving_monitoring.html.j2"
    )
    assert "No monitoring of a served version is recorded yet" in template.render(e={})
    identity = {"model_name": "ppml-x", "model_version": "3", "trained_as_of": "2026-04-30", "window_days": 7.0}
    identity |= {"evaluated_at": "2026-05-01T00:00:00+00:00"}
    few = monitoring_report(_stream(10), REFERENCE, SCORES, SETTINGS, age_days=1.0)
    assert "not enough predictions (10 rows &lt; 100)" in template.render(e={"serving_monitoring": identity | few})
    labelled = monitoring_report(_stream(400, feedback_every=4, wrong=True), REFERENCE, None, SETTINGS, 30.0)
    html = template.render(e={"serving_monitoring": identity | labelled})
    assert "no evaluation scores recorded" in html and "below objective" in html and "<strong>retrain</strong>" in html
    assert "<td>sex</td><td>F</td>" in html
