"""verify_release catches every kind of broken release (the asset checks rely on it)."""

from __future__ import annotations

import pandas as pd

from ppml.anonymization import AnonymizationConfig, Hierarchy, LDiversity, TCloseness, verify_release

SEX = Hierarchy.from_rows([("Male", "*"), ("Female", "*")])
DIAG = Hierarchy.from_rows([("flu", "resp", "*"), ("asthma", "resp", "*"), ("ulcer", "dig", "*")])


def released() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sex": ["Male"] * 4 + ["Female"] * 4,
            "diag": ["flu", "flu", "flu", "asthma", "flu", "ulcer", "asthma", "ulcer"],
            "name": ["n"] * 8,
        }
    )


def rules(violations: list) -> set[str]:
    return {v.rule for v in violations}


def test_passing_release() -> None:
    config = AnonymizationConfig({"sex": SEX}, k=4, l_diversity=(LDiversity("diag", 2),))
    assert verify_release(released().drop(columns="name"), config, original_rows=8) == []


def test_each_violation_is_reported() -> None:
    config = AnonymizationConfig(
        {"sex": SEX},
        k=5,
        l_diversity=(LDiversity("diag", 3),),
        t_closeness=(TCloseness("diag", 0.1),),
        suppression_limit=0.05,
    )
    violations = verify_release(released(), config, original_rows=10, forbidden_columns=["name", "ssn"])
    assert rules(violations) == {"direct_identifier", "k_anonymity", "l_diversity", "t_closeness", "suppression_limit"}
    k = next(v for v in violations if v.rule == "k_anonymity")
    assert k.classes == 2 and k.records == 8 and k.examples[0]["size"] == 4
    assert all(v.to_dict()["detail"] for v in violations)


def test_hierarchical_t_closeness_and_missing_qi() -> None:
    config = AnonymizationConfig(
        {"sex": SEX, "age": SEX},
        k=2,
        t_closeness=(TCloseness("diag", 0.05, "hierarchical"),),
        sensitive_hierarchies={"diag": DIAG},
    )
    violations = verify_release(released(), config)
    assert rules(violations) == {"missing_quasi_identifier", "t_closeness"}
