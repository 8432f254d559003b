"""``ppml anonymize`` on a local Typer app: outputs, report, policy mode, and bad input (exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from ppml.anonymization.datasets import ADULT_DIR, ADULT_QIS

HIERARCHIES = ADULT_DIR / "hierarchies"
GDPR = Path(__file__).resolve().parents[2] / "policies" / "adult_gdpr.yaml"


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    """The real `ppml` app: its error handling (one line, exit 2) is part of what these tests check."""
    from ppml.cli import app as application

    return application


@pytest.fixture(scope="module")
def adult_csv(tmp_path_factory: pytest.TempPathFactory, adult: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("cli") / "adult.csv"
    adult[list(ADULT_QIS)].rename(columns={"income": "salary-class"}).to_csv(path, sep=";", index=False)
    return path


def run(app: typer.Typer, *args: str):
    return CliRunner().invoke(app, ["anonymize", *args])


def test_cli_reproduces_arx_reference(app: typer.Typer, adult_csv: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out.csv", tmp_path / "out.json"
    qis = "sex,age,race,marital-status,education,native-country,workclass,occupation,salary-class"
    result = run(
        app,
        "--input",
        str(adult_csv),
        "--hierarchies",
        str(HIERARCHIES),
        "--qi",
        qis,
        "--k",
        "5",
        "--suppression",
        "0.05",
        "--sep",
        ";",
        "--out",
        str(out),
        "--report",
        str(report),
    )
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert list(document["transformation"].values()) == [0, 3, 0, 0, 2, 1, 1, 2, 0]
    assert document["quality"] == {**document["quality"], "metric": "loss", "value": 0.2419323650662908}
    assert document["suppressed_records"] == 1346 and document["equivalence_classes"] == 397
    for key in ("min_class_size", "transformations_checked", "seconds", "risk_before", "risk_after"):
        assert key in document
    assert document["verification"]["passed"]
    released = pd.read_csv(out, sep=";", dtype=str)
    assert len(released) == 30162 - 1346


def test_cli_l_diversity_and_hierarchy_override(app: typer.Typer, adult_csv: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "out.csv", tmp_path / "out.json"
    result = run(
        app,
        "--input",
        str(adult_csv),
        "--hierarchies",
        str(tmp_path),
        "--hierarchy",
        f"age={HIERARCHIES / 'age.csv'}",
        "--hierarchy",
        f"sex={HIERARCHIES / 'sex.csv'}",
        "--qi",
        "age,sex",
        "--sensitive",
        "occupation",
        "--k",
        "5",
        "--l",
        "3",
        "--l-variant",
        "entropy",
        "--sep",
        ";",
        "--metric",
        "entropy",
        "--out",
        str(out),
        "--report",
        str(report),
    )
    assert result.exit_code == 0, result.output
    document = json.loads(report.read_text())
    assert document["quality"]["metric"] == "entropy"
    assert "entropy 3-diversity of occupation" in document["privacy_models"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--qi", "sex,zipcode", "--k", "5"], "zipcode"),
        (["--qi", "sex", "--k", "40000"], "larger than the number of rows"),
        (["--qi", "sex", "--k", "5", "--l", "2"], "--sensitive"),
        (["--qi", "sex", "--k", "5", "--metric", "nope"], "field '--metric': 'nope' is not one of 'loss'"),
        (
            ["--qi", "sex,salary-class", "--sensitive", "occupation", "--k", "2", "--l", "20"],
            "no transformation that satisfies",
        ),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(
    app: typer.Typer, adult_csv: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    out, report = tmp_path / "out.csv", tmp_path / "out.json"
    result = run(
        app,
        "--input",
        str(adult_csv),
        "--hierarchies",
        str(HIERARCHIES),
        "--sep",
        ";",
        *args,
        "--out",
        str(out),
        "--report",
        str(report),
    )
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0]
    assert not out.exists() and not report.exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_value_missing_from_hierarchy(app: typer.Typer, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text("sex,x\nMale,1\nFemale,2\nOther,3\n")
    result = run(
        app,
        "--input",
        str(data),
        "--hierarchies",
        str(HIERARCHIES),
        "--qi",
        "sex",
        "--k",
        "1",
        "--out",
        str(tmp_path / "o.csv"),
        "--report",
        str(tmp_path / "o.json"),
    )
    assert result.exit_code == 2 and "'Other'" in result.stderr and "'sex'" in result.stderr
    assert not (tmp_path / "o.csv").exists()


def test_cli_policy_mode(app: typer.Typer, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    source = (Path(__file__).resolve().parents[2] / "policies" / "adult_gdpr.yaml").read_text()
    source = source.replace("../ppml/data/adult/hierarchies/", f"{HIERARCHIES}/").replace(
        "  erasure_list: ../data/erasure_requests.csv\n", ""
    )
    policy.write_text(source)
    rows = 200
    data = pd.DataFrame(
        {
            "age": [str(20 + i % 40) for i in range(rows)],
            "sex": ["Male", "Female"] * (rows // 2),
            "race": ["White", "Black", "Other", "White"] * (rows // 4),
            "marital_status": ["Divorced", "Never-married"] * (rows // 2),
            "education": ["HS-grad", "Bachelors", "Masters", "9th"] * (rows // 4),
            "native_country": ["United-States"] * rows,
            "workclass": ["Private", "State-gov"] * (rows // 2),
            "occupation": ["Sales", "Tech-support", "Craft-repair", "Adm-clerical", "Exec-managerial"] * (rows // 5),
        }
    )
    data_path = tmp_path / "in.csv"
    data.to_csv(data_path, index=False)
    out, report = tmp_path / "out.csv", tmp_path / "out.json"
    result = run(app, "--input", str(data_path), "--policy", str(policy), "--out", str(out), "--report", str(report))
    assert result.exit_code == 0, result.stderr
    document = json.loads(report.read_text())
    assert "5-anonymity" in document["privacy_models"] and document["min_class_size"] >= 5


IDENTIFIER_COLUMNS = ("name", "ssn", "email", "phone", "street_address", "zip", "date_of_birth")


@pytest.fixture(scope="module")
def landing_csv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A week of the bundled landing zone: Adult with synthetic names, SSNs, e-mails, phones, addresses, ZIPs."""
    from ppml.landing_zone import synthesize_records
    from tests.support import days

    records = synthesize_records(only_days=days("2026-01-01", 7))
    path = tmp_path_factory.mktemp("landing") / "records.csv"
    records.to_csv(path, index=False)
    return path, records


@pytest.mark.parametrize("policy_name", ["adult_gdpr", "adult_hipaa"])
def test_cli_policy_mode_writes_no_direct_identifier(
    app: typer.Typer, landing_csv: tuple[Path, pd.DataFrame], tmp_path: Path, policy_name: str
) -> None:
    path, records = landing_csv
    policy = Path(__file__).resolve().parents[2] / "policies" / f"{policy_name}.yaml"
    out, report = tmp_path / "out.csv", tmp_path / "out.json"
    result = run(app, "--input", str(path), "--policy", str(policy), "--out", str(out), "--report", str(report))
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    released = pd.read_csv(out, dtype=str, keep_default_na=False)
    cells = set(released.to_numpy().ravel().tolist())
    for column in IDENTIFIER_COLUMNS:
        raw = set(records[column].astype(str))
        assert not raw & cells, column
        assert not any(value in text for value in list(raw)[:300] if len(value) >= 6), column
    for column in ("record_id", "name", "ssn", "email", "phone", "street_address", "date_of_birth", "event_date"):
        assert column not in released.columns
    document = json.loads(report.read_text())
    assert document["direct_identifiers"]["ssn"] == "dropped"
    assert {"fnlwgt", "education_num"}.isdisjoint(released.columns)
    assert document["release_safety"]["min_class_size_over_attacker_knowledge"] >= document["min_class_size"] >= 5


def test_cli_policy_mode_refuses_an_unlisted_identifier_and_an_unsafe_column(
    app: typer.Typer, landing_csv: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    path, records = landing_csv
    source = (Path(__file__).resolve().parents[2] / "policies" / "adult_gdpr.yaml").read_text()
    source = source.replace("../ppml/data/adult/hierarchies/", f"{HIERARCHIES}/").replace(
        "  erasure_list: ../data/erasure_requests.csv\n", ""
    )
    policy = tmp_path / "policy.yaml"
    out, report = tmp_path / "out.csv", tmp_path / "out.json"
    extra = tmp_path / "extra.csv"
    records.assign(customer_email=records["email"]).to_csv(extra, index=False)
    result = run(app, "--input", str(extra), "--policy", str(GDPR), "--out", str(out), "--report", str(report))
    assert result.exit_code == 2 and "customer_email" in result.stderr and "direct_identifiers" in result.stderr
    assert not out.exists() and not report.exists()
    policy.write_text(source.replace("    fnlwgt: drop ", "    fnlwgt: refuse "))
    result = run(app, "--input", str(path), "--policy", str(policy), "--out", str(out), "--report", str(report))
    assert result.exit_code == 2, result.stdout
    line = result.stderr.strip()
    assert "\n" not in line and "release.columns.fnlwgt" in line and "unique for" in line and "fix:" in line
    assert not out.exists() and not report.exists()
