"""The documents, plots and PDF from stored evidence of real runs (tests/evidence/data: the GDPR and HIPAA
lifecycles' evidence.json, attack ROC curves trimmed): each holds the run's measured values and cites them."""

from __future__ import annotations

import copy
import json
import re
from html import unescape
from pathlib import Path

import pandas as pd
import pytest

from ppml.documents.guarantees import audit_strength, guarantees
from ppml.documents.measurements import identifier_pattern_scan
from ppml.documents.render import render_bodies, write_documents
from ppml.documents.safe_harbor import checklist

DATA = Path(__file__).resolve().parent / "data"


def _evidence(name: str) -> dict:
    return json.loads((DATA / f"{name}_evidence.json").read_text())


def _text(path: Path) -> str:
    html = re.sub(r"<style>.*?</style>", "", path.read_text(), flags=re.S)
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


def _fmt(value: float) -> str:
    return f"{value:.3g}"


@pytest.fixture(scope="module")
def gdpr(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    evidence, folder = _evidence("gdpr"), tmp_path_factory.mktemp("gdpr")
    write_documents(evidence, folder)
    return evidence, folder


@pytest.fixture(scope="module")
def hipaa(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    evidence, folder = _evidence("hipaa"), tmp_path_factory.mktemp("hipaa")
    write_documents(evidence, folder)
    return evidence, folder


def test_each_regulation_gets_its_documents(gdpr, hipaa) -> None:  # type: ignore[no-untyped-def]
    assert sorted(p.name for p in (gdpr[1] / "documents").iterdir()) == [
        "annex_iv.html",
        "art30_record.html",
        "dpia.html",
        "guarantees.html",
        "model_card.html",
    ]
    assert sorted(p.name for p in (hipaa[1] / "documents").iterdir()) == [
        "annex_iv.html",
        "guarantees.html",
        "model_card.html",
        "safe_harbor.html",
    ]
    for _, folder in (gdpr, hipaa):
        plots = {p.stem for p in (folder / "plots").iterdir()}
        assert {"roc", "calibration", "epsilon_over_retrains", "group_accuracy", "information_loss"} <= plots
        assert all((folder / "plots" / f"{n}.png").read_bytes()[:4] == b"\x89PNG" for n in plots)


def test_dpia_follows_article_35_7_and_holds_the_measured_values(gdpr) -> None:  # type: ignore[no-untyped-def]
    evidence, folder = gdpr
    text = _text(folder / "documents" / "dpia.html")
    for heading in ("(a) Systematic description", "(b) Necessity and proportionality", "(c) Risks", "(d) Measures"):
        assert heading in text
    anonymization = evidence["anonymization"]
    assert f"{anonymization['records_out']} ({anonymization['suppressed_records']} suppressed)" in text
    assert f"{_fmt(anonymization['risk_after']['prosecutor_highest'])} after" in text
    assert _fmt(evidence["model_evaluation"]["dp"]["accuracy"]) in text
    assert evidence["accountability"]["controller"] in text
    assert "race (racial or ethnic origin)" in text and "Art. 9(2)(j)" in text
    assert text.count("[evidence:") >= 12  # every paragraph and list item cites its field
    for check in evidence["checks"]:
        assert check["name"] in text


def test_article_30_record_states_what_only_the_policy_knows(gdpr) -> None:  # type: ignore[no-untyped-def]
    evidence, folder = gdpr
    text = _text(folder / "documents" / "art30_record.html")
    assert evidence["accountability"]["dpo"] in text
    assert all(recipient in text for recipient in evidence["accountability"]["recipients"])
    assert "(e) transfers to third countries none" in text
    unstated = copy.deepcopy(evidence)
    unstated["accountability"]["dpo"] = ""
    _, body = render_bodies(unstated, set())["art30_record"]
    assert "DPO: NOT STATED in the policy (use_case.dpo)" in unescape(body)


def test_safe_harbor_checklist_covers_the_18_classes_with_action_or_check(hipaa) -> None:  # type: ignore[no-untyped-def]
    evidence, folder = hipaa
    rows = checklist(evidence)
    assert [r["category"] for r in rows] == list("ABCDEFGHIJKLMNOPQR")
    by = {r["category"]: r for r in rows}
    assert by["A"]["treatment"] == ["name: drop"] and by["A"]["verdict"] == "handled"
    assert any(t.startswith("zip: zip3") for t in by["B"]["treatment"])
    assert any("top-coded" in t for t in by["C"]["treatment"])
    assert by["E"]["verdict"] == "absent (checked)" and by["E"]["checks"]
    assert any("distinct released text values have the class's shape" in c for c in by["F"]["checks"])
    assert all(r["verdict"] != "FAIL" for r in rows)
    text = _text(folder / "documents" / "safe_harbor.html")
    assert "Expert Determination worksheet" in text
    assert _fmt(evidence["anonymization"]["risk_after"]["prosecutor_risk_highest"]) in text


def test_a_released_identifier_fails_its_safe_harbor_class(hipaa) -> None:  # type: ignore[no-untyped-def]
    evidence = copy.deepcopy(hipaa[0])
    evidence["release_identifier_scan"]["columns_scanned"].append("contact_email")
    evidence["release_identifier_scan"]["distinct_values_matching"]["G"] = 3
    by = {r["category"]: r for r in checklist(evidence)}
    assert by["F"]["verdict"] == "FAIL" and "contact_email" in by["F"]["checks"][0]
    assert by["G"]["verdict"] == "FAIL"


def test_model_card_has_mitchell_sections_and_group_figures(gdpr) -> None:  # type: ignore[no-untyped-def]
    evidence, folder = gdpr
    text = _text(folder / "documents" / "model_card.html")
    for section in (
        "Model details",
        "Intended use",
        "Factors",
        "Metrics",
        "Evaluation data",
        "Training data",
        "Quantitative analyses",
        "Ethical considerations",
        "Caveats and recommendations",
    ):
        assert section in text
    group = evidence["model_evaluation"]["groups"][0]
    assert f"{group['attribute']} = {group['group']} {group['n']} {_fmt(group['dp_accuracy'])}" in text


def test_annex_iv_names_data_hashes_and_what_it_does_not_cover(hipaa) -> None:  # type: ignore[no-untyped-def]
    evidence, folder = hipaa
    text = _text(folder / "documents" / "annex_iv.html")
    assert evidence["data"]["hashes"]["anonymized_records"] in text
    assert "Sections not covered" in text and "human oversight" in text
    assert "age.csv" in text  # the hierarchy files are identified


def test_guarantees_state_numbers_and_the_audits_strength(gdpr) -> None:  # type: ignore[no-untyped-def]
    evidence, folder = gdpr
    stated = {g.title: g for g in guarantees(evidence)}
    dp = stated["Differentially private model (per record)"]
    assert dp.numbers["epsilon"] == _fmt(evidence["training"]["epsilon_including_selection"])
    assert "at most" in dp.cannot_learn and "%" in dp.numbers["bound on detection at 1% false accusations"]
    whitebox = evidence["audit"]["whitebox"]
    audit = stated["White-box audit of the DP training"]
    assert f"could have shown at most epsilon >= {_fmt(whitebox['max_achievable_bound'])}" in audit.cannot_learn
    assert f"showed epsilon >= {_fmt(whitebox['epsilon_lower_bound'])}" in audit.cannot_learn
    text = _text(folder / "documents" / "guarantees.html")
    assert all(g.title in text for g in stated.values())
    without = copy.deepcopy(evidence)
    without["audit"] = None
    assert "White-box audit of the DP training" not in {g.title for g in guarantees(without)}


def test_the_black_box_audit_states_what_it_could_have_detected() -> None:
    audit = {
        "canaries": 1000,
        "confidence": 0.95,
        "delta": 1e-6,
        "epsilon_lower_bound": 0.0,
        "claimed_epsilon": 0.99,
        "alarm": False,
        "details": {"bonferroni_tests": 3, "settings": {"guess_fractions": [0.05, 0.1, 0.2]}},
    }
    strength = audit_strength(audit)
    stated = {g.title: g for g in guarantees({"audit": audit})}["Empirical audit of the DP claim"]
    assert strength is not None and f"could only have shown epsilon >= {_fmt(strength)}" in stated.cannot_learn


def test_audit_strength_grows_with_the_canaries() -> None:
    audit = {
        "canaries": 1000,
        "confidence": 0.95,
        "delta": 1e-6,
        "details": {"bonferroni_tests": 3, "settings": {"guess_fractions": [0.05, 0.1, 0.2]}},
    }
    small = audit_strength(audit)
    large = audit_strength({**audit, "canaries": 10000})
    assert small is not None and large is not None and 0 < small < large


def test_identifier_pattern_scan_finds_identifier_shapes() -> None:
    frame = pd.DataFrame(
        {"a": ["x@y.org", "plain", "123-45-6789"], "b": ["10.0.0.1", "www.example.org", "90210"], "n": [1, 2, 3]}
    )
    scan = identifier_pattern_scan(frame)
    assert scan["columns_scanned"] == ["a", "b"]
    assert {k: v for k, v in scan["distinct_values_matching"].items() if v} == {"F": 1, "G": 1, "O": 1, "N": 1, "B": 1}


def test_pdf_renders_every_document(hipaa) -> None:  # type: ignore[no-untyped-def]
    from pypdf import PdfReader

    from ppml.documents.pdf import write_pdf

    evidence, folder = hipaa
    bodies = render_bodies(evidence, {p.stem for p in (folder / "plots").iterdir()})
    reader = PdfReader(write_pdf(evidence, bodies, folder))
    text = " ".join(" ".join(page.extract_text() for page in reader.pages).split())
    assert len(reader.pages) >= 1 + len(bodies)
    assert f"Compliance report: {evidence['decision']['model_name']} v{evidence['decision']['version']}" in text
    for phrase in ("Safe Harbor", "Model card", "Annex IV", "plain language", "Expert Determination"):
        assert phrase in text
    assert sum(len(page.images) for page in reader.pages) >= 4  # the plots are embedded
