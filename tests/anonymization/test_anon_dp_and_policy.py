"""OpenDP summary accounting, the policy-to-config mapping, risk and quality metric definitions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ppml.anonymization import AnonymizationConfig, Hierarchy, anonymize, class_statistics, config_from_policy
from ppml.anonymization.risk import risk_from_frame, risk_from_sizes
from ppml.dp_statistics import dp_summary
from ppml.errors import PPMLError
from ppml.policy import bundled_policy_path, load_policy


def test_dp_summary_spends_at_most_the_budget(adult: pd.DataFrame) -> None:
    summary = dp_summary(
        adult,
        epsilon=0.5,
        categorical={"sex": ["Male", "Female"], "race": None},
        numeric={"hours-per-week": (1, 99), "age": (17, 90)},
    )
    assert summary.queries == 5
    assert summary.epsilon_spent <= 0.5 + 1e-9
    assert summary.epsilon_per_query == pytest.approx(0.1)
    assert abs(summary.total_count - len(adult)) < 200  # scale 10: far beyond 10 sigma would be a bug
    sex = summary.categories[0]
    assert set(sex.counts) == {"Male", "Female", "(other)"} and sex.public_categories
    assert not summary.categories[1].public_categories
    hours = summary.means[0]
    assert 1 <= hours.mean <= 99 and abs(hours.mean - 40.9) < 5
    document = summary.to_dict()
    assert document["library"] == "OpenDP" and document["epsilon_budget"] == 0.5


def test_dp_summary_rejects_bad_input(adult: pd.DataFrame) -> None:
    with pytest.raises(PPMLError, match="epsilon"):
        dp_summary(adult, epsilon=0)
    with pytest.raises(PPMLError, match="not in the data"):
        dp_summary(adult, epsilon=1, categorical=["nope"])
    with pytest.raises(PPMLError, match="bounds"):
        dp_summary(adult, epsilon=1, numeric={"age": (5, 1)})


def test_config_from_policy() -> None:
    loaded = load_policy(bundled_policy_path(), check_files=False)
    config = config_from_policy(loaded)
    assert list(config.quasi_identifiers) == list(loaded.policy.schema_.quasi_identifiers)
    assert config.k == 5 and config.suppression_limit == 0.05
    assert [m.describe() for m in config.l_diversity] == ["distinct 2-diversity of occupation"]
    assert all(isinstance(h, Hierarchy) for h in config.quasi_identifiers.values())
    renamed = config_from_policy(loaded, column_names={"marital_status": "marital-status"})
    assert "marital-status" in renamed.quasi_identifiers


def test_risk_definitions() -> None:
    risk = risk_from_sizes(np.array([1, 2, 2, 5]), threshold=0.4)
    assert risk.records == 10 and risk.equivalence_classes == 4
    assert risk.prosecutor_risk_highest == 1.0 and risk.prosecutor_risk_average == pytest.approx(0.4)
    assert risk.journalist_risk_highest == risk.prosecutor_risk_highest
    assert risk.marketer_risk == pytest.approx(0.4)
    assert risk.records_at_risk == pytest.approx(0.5)  # the unique record and both pairs
    assert risk.sample_uniqueness == pytest.approx(0.1)
    frame = pd.DataFrame({"a": ["x", "x", "y"]})
    assert risk_from_frame(frame, ["a"]).equivalence_classes == 2


def test_metric_definitions_on_a_hand_example() -> None:
    df = pd.DataFrame({"a": ["p", "p", "q", "q", "r"]})
    hierarchy = Hierarchy.from_rows([("p", "pq", "*"), ("q", "pq", "*"), ("r", "r", "*"), ("s", "r", "*")])
    config = AnonymizationConfig({"a": hierarchy}, k=2, suppression_limit=0.2)
    # Level 1: classes pq (4) and r (1, suppressed). Level 0: p, q kept, r suppressed: the optimum.
    result = anonymize(df, config)
    assert result.transformation == {"a": 0} and result.suppressed_records == 1
    # Loss: 4 records x 1/4 + 1 suppressed = 2; normalized (2 - 5/4) / (5 - 5/4) = 0.2
    assert result.quality["value"] == pytest.approx(0.2)
    dm = anonymize(df, AnonymizationConfig({"a": hierarchy}, k=2, suppression_limit=0.2, metric="discernibility"))
    assert dm.quality["value"] == 2 * 2 + 2 * 2 + 1 * 5
    aecs = anonymize(df, AnonymizationConfig({"a": hierarchy}, k=2, suppression_limit=0.2, metric="aecs"))
    assert aecs.quality["value"] == pytest.approx(5 / 3)
    entropy = anonymize(df, AnonymizationConfig({"a": hierarchy}, k=2, suppression_limit=0.2, metric="entropy"))
    # ARX: level 0 costs nothing; the suppressed records (only r) form one group of entropy 0
    assert entropy.transformation == {"a": 0} and entropy.quality["value"] == 0.0
    two = pd.DataFrame({"a": ["p", "p", "q", "q", "r", "s"]})
    spread = anonymize(two, AnonymizationConfig({"a": hierarchy}, k=2, suppression_limit=0.34, metric="entropy"))
    # r and s suppressed at level 0: 1*log2(2/1) + 1*log2(2/1) = 2 bits; level 1 would cost 4 + 2 = 6 bits
    assert spread.transformation == {"a": 0} and spread.quality["value"] == pytest.approx(2.0)


def test_class_statistics(adult: pd.DataFrame, adult_h: dict, tmp_path: Path) -> None:
    result = anonymize(adult, AnonymizationConfig(adult_h, k=5))
    stats = class_statistics(result.data, list(adult_h))
    assert stats["equivalence_classes"] == result.equivalence_classes == 24
    assert stats["min_class_size"] == 69 and stats["records"] == len(adult)
    assert sum(stats["class_size_histogram"].values()) == 24


def test_public_categories_feed_the_dp_summary(adult: pd.DataFrame, adult_h: dict) -> None:
    result = anonymize(adult, AnonymizationConfig(adult_h, k=5))
    assert result.public_categories["age"] == ["*"]
    assert sorted(result.public_categories["sex"]) == ["Female", "Male"]
    summary = dp_summary(result.data, epsilon=1.0, categorical={"sex": result.public_categories["sex"]})
    assert summary.categories[0].public_categories


def test_policy_with_a_hierarchy_spec(tmp_path: Path, adult: pd.DataFrame) -> None:
    source = bundled_policy_path().read_text()
    folder = bundled_policy_path().parent.parent / "ppml" / "data" / "adult" / "hierarchies"
    source = source.replace("../ppml/data/adult/hierarchies/", f"{folder}/").replace(
        f"age: {{hierarchy: {folder}/age.csv}}", "age: {hierarchy_spec: {type: interval, widths: [5, 10, 20]}}"
    )
    path = tmp_path / "policy.yaml"
    path.write_text(source)
    config = config_from_policy(
        load_policy(path, check_files=False),
        column_names={"marital_status": "marital-status", "native_country": "native-country"},
    )
    assert type(config.quasi_identifiers["age"]).__name__ == "HierarchySpec"
    result = anonymize(adult, config)
    assert result.min_class_size >= 5 and result.suppressed_records <= 0.05 * len(adult)
    assert set(result.data["age"]) <= {"*"} | {label for label in result.data["age"] if "-" in label}
