"""Hierarchies (ARX CSV and specs) and every bad input the issue lists, each with a one-line error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ppml.anonymization import AnonymizationConfig, Hierarchy, HierarchySpec, LDiversity, anonymize
from ppml.errors import PPMLError

SEX = Hierarchy.from_rows([("Male", "*"), ("Female", "*")])
AGE = HierarchySpec({"type": "interval", "widths": [10, 20]})


def frame(n: int = 20) -> pd.DataFrame:
    return pd.DataFrame(
        {"age": [20 + (i % 30) for i in range(n)], "sex": ["Male", "Female"] * (n // 2), "s": ["a", "b"] * (n // 2)}
    )


def one_line(exc: pytest.ExceptionInfo[PPMLError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "fix:" in message
    return message


def test_arx_csv_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sex.csv"
    path.write_text("Male;*\nFemale;*\n")
    hierarchy = Hierarchy.from_csv(path)
    assert hierarchy.height == 2 and hierarchy.domain_size == 2
    assert hierarchy.generalize("Female", 1) == "*"
    hierarchy.to_csv(tmp_path / "copy.csv")
    assert Hierarchy.from_csv(tmp_path / "copy.csv") == Hierarchy(hierarchy.rows, str(tmp_path / "copy.csv"))


def test_bundled_adult_hierarchies_are_valid(adult_h: dict) -> None:
    heights = [h.height for h in adult_h.values()]
    assert heights == [2, 5, 2, 3, 4, 3, 3, 3, 2]
    assert len(adult_h["age"].rows) == 100


def test_hierarchy_with_two_parents(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a;x;*\nb;x;*\nc;y;*\nd;y;z\n")
    with pytest.raises(PPMLError) as exc:
        Hierarchy.from_csv(path)
    message = one_line(exc)
    assert str(path) in message and "row 4" in message and "two parents" in message


def test_value_listed_twice_with_different_parents(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a;x;*\na;y;*\n")
    with pytest.raises(PPMLError, match="appears twice"):
        Hierarchy.from_csv(path)


def test_hierarchy_rows_of_different_lengths(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("a;x;*\nb;*\n")
    with pytest.raises(PPMLError) as exc:
        Hierarchy.from_csv(path)
    assert "row 2" in one_line(exc) and "different lengths" in str(exc.value)


def test_missing_hierarchy_file(tmp_path: Path) -> None:
    with pytest.raises(PPMLError, match="not found"):
        Hierarchy.from_csv(tmp_path / "nope.csv")


def test_value_missing_from_hierarchy_names_attribute_and_value() -> None:
    df = frame()
    df.loc[3, "sex"] = "Unknown"
    with pytest.raises(PPMLError) as exc:
        anonymize(df, AnonymizationConfig({"sex": SEX}, k=2, source="people.csv"))
    message = one_line(exc)
    assert "people.csv" in message and "'sex'" in message and "'Unknown'" in message


def test_missing_values_need_a_hierarchy_row() -> None:
    df = frame().astype({"sex": object})
    df.loc[0, "sex"] = None
    with pytest.raises(PPMLError, match="missing values"):
        anonymize(df, AnonymizationConfig({"sex": SEX}, k=2))
    with_empty = Hierarchy.from_rows([*SEX.rows, ("", "*")])
    assert anonymize(df, AnonymizationConfig({"sex": with_empty}, k=1)).suppressed_records == 0


def test_quasi_identifier_not_in_data() -> None:
    with pytest.raises(PPMLError) as exc:
        anonymize(frame(), AnonymizationConfig({"zip": SEX}, k=2, source="people.csv"))
    assert "'zip'" in one_line(exc) and "not in the data" in str(exc.value)


def test_k_larger_than_rows() -> None:
    with pytest.raises(PPMLError) as exc:
        anonymize(frame(10), AnonymizationConfig({"sex": SEX}, k=11))
    assert "larger than the number of rows" in one_line(exc)


def test_no_transformation_within_the_suppression_limit() -> None:
    df = frame()
    df["s"] = "a"  # one sensitive value: 2-diversity is impossible
    with pytest.raises(PPMLError) as exc:
        anonymize(df, AnonymizationConfig({"sex": SEX, "age": AGE}, k=2, l_diversity=(LDiversity("s", 2),)))
    message = one_line(exc)
    assert "no transformation that satisfies" in message and "suppress 20 of 20" in message


def test_sensitive_attribute_checks() -> None:
    with pytest.raises(PPMLError, match="not in the data"):
        anonymize(frame(), AnonymizationConfig({"sex": SEX}, k=2, l_diversity=(LDiversity("x", 2),)))
    with pytest.raises(PPMLError, match="both a quasi-identifier and a sensitive"):
        anonymize(frame(), AnonymizationConfig({"sex": SEX}, k=2, l_diversity=(LDiversity("sex", 2),)))


def test_interval_spec() -> None:
    hierarchy = AGE.build([20, 37, 49])
    assert hierarchy.rows == (
        ("20", "20-29", "20-39", "*"),
        ("37", "30-39", "20-39", "*"),
        ("49", "40-49", "40-59", "*"),
    )
    with pytest.raises(PPMLError, match="multiple"):
        HierarchySpec({"type": "interval", "widths": [5, 12]})
    with pytest.raises(PPMLError, match="not a number"):
        AGE.build(["abc"])


def test_date_spec() -> None:
    spec = HierarchySpec({"type": "date", "levels": ["month", "quarter", "year"]})
    assert spec.build(["2024-05-17"]).rows == (("2024-05-17", "2024-05", "2024-Q2", "2024", "*"),)
    with pytest.raises(PPMLError, match="fine to coarse"):
        HierarchySpec({"type": "date", "levels": ["year", "month"]})
    with pytest.raises(PPMLError, match="YYYY-MM-DD"):
        spec.build(["17/05/2024"])


def test_prefix_spec() -> None:
    spec = HierarchySpec({"type": "prefix", "keep": [3, 2, 1]})
    assert spec.build(["02139"]).rows == (("02139", "021**", "02***", "0****", "*"),)
    with pytest.raises(PPMLError, match="decreasing"):
        HierarchySpec({"type": "prefix", "keep": [1, 3]})
    with pytest.raises(PPMLError, match="unknown hierarchy spec type"):
        HierarchySpec({"type": "zip"})


def test_spec_hierarchies_in_anonymize() -> None:
    df = pd.DataFrame({"zip": ["02139", "02138", "02141", "02142"] * 5, "visit": ["2024-01-03", "2024-02-11"] * 10})
    config = AnonymizationConfig(
        {
            "zip": HierarchySpec({"type": "prefix", "keep": [3]}),
            "visit": HierarchySpec({"type": "date", "levels": ["year"]}),
        },
        k=10,
    )
    result = anonymize(df, config)
    assert result.min_class_size >= 10
    assert set(result.data["zip"]) <= {"021**", "*"}


def test_edge_cases() -> None:
    flat = Hierarchy.from_rows([("a",), ("b",)])  # one level: nothing to generalize
    df = pd.DataFrame({"x": ["a", "a", "b", "b"], "y": [1, 2, 3, 4]})
    result = anonymize(df, AnonymizationConfig({"x": flat}, k=2))
    assert result.transformation == {"x": 0} and result.lattice_size == 1
    with pytest.raises(PPMLError, match="no transformation that satisfies"):
        anonymize(df, AnonymizationConfig({"x": flat}, k=3))
    same = pd.DataFrame({"sex": ["Male"] * 5})
    assert anonymize(same, AnonymizationConfig({"sex": SEX}, k=5)).equivalence_classes == 1
    assert anonymize(df.assign(sex=["Male", "Female"] * 2), AnonymizationConfig({"sex": SEX}, k=1)).min_class_size == 2
    numbers = pd.DataFrame({"age": [20, 21, 35, 36, 37, 52]})
    assert anonymize(numbers, AnonymizationConfig({"age": AGE}, k=2)).data["age"].tolist() == ["*"] * 6
    suppressed = anonymize(numbers, AnonymizationConfig({"age": AGE}, k=2, suppression_limit=0.2))
    assert suppressed.data["age"].tolist() == ["20-29"] * 2 + ["30-39"] * 3 and suppressed.suppressed_records == 1
    assert pd.api.types.is_string_dtype(suppressed.data["age"])
