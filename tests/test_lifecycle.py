"""End to end: the whole lifecycle on SQLite (through `ppml demo`) and on PostgreSQL, and the compliance gate.

Done-when scenarios of the gate, each on the real graph:
- the DP model of the demo passes every requirement and is promoted;
- a non-private model over-fitted on a small sample fails the membership-inference gate and is not promoted;
- a broken DP training (noise multiplier 0 while the accountant still claims epsilon) is caught by the audit.
"""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from dagster import AssetKey, asset, instance_for_test, materialize
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ppml.compliance import REQUIREMENTS
from resources import MlflowResource
from tests.evidence.checks import assert_pack_verifies_then_names_a_changed_byte
from tests.graph_support import graph_workspace, write_policy
from tests.support import REPO_ROOT, TEST_FIRST_DAY, days

SMALL_WINDOW_SETTINGS = {
    "objectives__min_accuracy": 0.7,
    "objectives__min_roc_auc": 0.7,
    "objectives__max_utility_gap": 0.2,
    # A batch fit for ~4,000 training rows: with the demo's 1,024 (chosen for 25,000) DP-SGD at epsilon 1 ends
    # near-constant on this sample (balanced accuracy 0.52, F1 0.08), which the gate rightly refuses.
    "training__batch_size": 256,
    # FNR over the ~30 positives of a group in an 850-row test split moves by +-0.17 between DP runs.
    "objectives__max_group_error_rate_gap": 0.5,
}


def _evidence(home: Path, as_of: str) -> dict:
    return json.loads((home / "reports" / as_of / "evidence.json").read_text())


@pytest.mark.slow
def test_make_demo_path_promotes_the_dp_model(tmp_path: Path) -> None:
    """`ppml demo` on a fresh workspace: the 90-day window, every requirement passes, the model is promoted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PPML_", "DAGSTER_", "MLFLOW_"))}
    env["PPML_HOME"] = str(tmp_path / "ppml-home")
    user_zone = tmp_path / "my-landing-zone"  # a user's own landing zone: the demo must never write into it
    user_zone.mkdir()
    env["PPML_LANDING_ZONE"] = str(user_zone)
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "ppml"), "demo"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    total = len(REQUIREMENTS)
    assert f"{total} of {total} requirements passed" in completed.stdout
    report = tmp_path / "ppml-home" / "reports" / "2026-04-30" / "report.html"
    assert report.is_file() and str(report) in completed.stdout.replace("\n", "")
    # the evidence pack's path is printed, and the auditor's command passes on the fresh workspace
    assert f"Evidence pack: {report.parent}" in completed.stdout.replace("\n", "")
    verified = subprocess.run(
        [str(Path(sys.executable).parent / "ppml"), "verify", str(report.parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stdout + verified.stderr
    evidence = _evidence(tmp_path / "ppml-home", "2026-04-30")
    assert evidence["window"]["partitions"] == 90
    assert all(check["passed"] for check in evidence["checks"])
    assert evidence["decision"]["promoted"] is True
    assert evidence["training"]["epsilon"] <= 1.0
    assert not any(user_zone.iterdir())
    assert evidence["training"]["target_delta"] == 1e-6  # delta: auto for ~24k training records
    assert evidence["audit"]["epsilon_lower_bound"] <= evidence["audit"]["claimed_epsilon"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'ppml-home' / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version_by_alias("ppml-adult-income-gdpr", "production")
    assert str(version.version) == str(evidence["decision"]["version"])
    assert version.tags["ppml.compliance"] == "passed"
    # the ledger shows the charged runs, and nothing personal reached the report
    ledger = sa.create_engine(f"sqlite:///{tmp_path / 'ppml-home' / 'dagster' / 'privacy_ledger.db'}")
    with ledger.connect() as connection:
        statuses = [row[0] for row in connection.execute(sa.text("SELECT status FROM ppml_ledger_runs"))]
    assert statuses and all(status == "completed" for status in statuses)
    html = report.read_text()
    assert evidence["serving_monitoring"] is None  # nothing was served yet: the report's section says so
    assert "No monitoring of a served version is recorded yet" in html
    raw = pd.read_csv(tmp_path / "ppml-home" / "landing" / "event_date=2026-04-30" / "records.csv", dtype=str)
    for column in ("name", "ssn", "email", "phone", "street_address"):
        assert not any(value in html for value in raw[column]), column
    _assert_console_is_the_operators(completed.stdout + completed.stderr)
    _inspect_the_demo_workspace(env, tmp_path / "ppml-home", report)


#: Library log lines that must never reach the console (they go to $PPML_HOME/logs/ppml.log).
LIBRARY_LINES = ("INFO mlflow", "alembic", "ephemeral docs site", "emitted no result", "Warning:", "WARNING")


def _assert_console_is_the_operators(output: str) -> None:
    for needle in LIBRARY_LINES:
        assert needle not in output, needle
    assert all(len(line) <= 80 for line in output.splitlines()), [
        line for line in output.splitlines() if len(line) > 80
    ]


def _inspect_the_demo_workspace(env: dict, home: Path, report: Path) -> None:
    """`ppml status`, `ppml ledger` and `ppml report` on the workspace the demo just filled."""
    ppml = str(Path(sys.executable).parent / "ppml")

    def run(*args: str) -> str:
        done = subprocess.run([ppml, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert all(len(line) <= 80 for line in done.stdout.splitlines()), done.stdout
        return done.stdout

    status = run("status")
    assert "training_job" in status and "collection_job" in status and "success" in status
    total = len(REQUIREMENTS)
    assert f"compliance as of 2026-04-30: {total} of {total} requirements passed" in status
    assert "adult-census-1994" in status and "left ε" in status
    ledger = run("ledger")
    assert "completed" in ledger and " dp " in ledger.replace("│", " ")
    before = report.stat().st_mtime_ns
    rendered = run("report", "--as-of", "2026-04-30")
    again = report.parent / "rerendered" / "report.html"
    assert str(again) in rendered.replace("\n", "") and report.stat().st_mtime_ns == before
    assert stat.S_IMODE(again.stat().st_mode) == 0o600


@pytest.mark.postgres
def test_lifecycle_on_postgresql_instance_storage(tmp_path: Path, landing_zone: Path, postgres_databases) -> None:  # type: ignore[no-untyped-def]
    """Runs, materializations and check evaluations land in PostgreSQL; ledger and MLflow use PostgreSQL too."""
    dagster_url, mlflow_url = postgres_databases(), postgres_databases()
    policy = write_policy(
        tmp_path, evaluation__audit_canaries=0, evaluation__reference_models=1, **SMALL_WINDOW_SETTINGS
    )
    workspace = graph_workspace(tmp_path / "home", landing_zone, policy, mlflow_uri=mlflow_url, ledger_url=dagster_url)
    window = days(TEST_FIRST_DAY, 14)
    with instance_for_test(overrides={"storage": {"postgres": {"postgres_url": dagster_url}}}) as instance:
        assert workspace.run("requirements_job", instance).success
        assert workspace.collect(instance, window[0], window[-1]).success
        result = workspace.run("training_job", instance, partition_key=window[-1])
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        run_id = result.run_id
    engine = sa.create_engine(dagster_url)
    with engine.connect() as connection:
        runs = connection.execute(sa.text("SELECT count(*) FROM runs")).scalar_one()
        materialized = connection.execute(
            sa.text(
                "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND run_id = :r"
            ),
            {"r": run_id},
        ).scalar_one()
        registered = connection.execute(
            sa.text("SELECT count(*) FROM event_logs WHERE asset_key LIKE '%registered_model%' AND run_id = :r"),
            {"r": run_id},
        ).scalar_one()
        ledger_runs = connection.execute(
            sa.text("SELECT count(*) FROM ppml_ledger_runs WHERE kind = 'dp'")
        ).scalar_one()
    engine.dispose()
    assert runs == 3 and materialized >= 14 and registered >= 1 and ledger_runs >= 1
    assert MlflowClient(tracking_uri=mlflow_url).get_model_version_by_alias("ppml-adult-income-gdpr", "production")
    assert _evidence(workspace.home, window[-1])["decision"]["promoted"] is True


def test_hipaa_safe_harbor_lifecycle(tmp_path: Path, landing_zone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The HIPAA policy end to end: Safe Harbor de-identification, ZIP3 as a generalized quasi-identifier."""
    from tests.support import HIPAA_POLICY

    policy = write_policy(tmp_path, base=HIPAA_POLICY, evaluation__reference_models=1, **SMALL_WINDOW_SETTINGS)
    workspace = graph_workspace(tmp_path / "home", landing_zone, policy)
    window = days(TEST_FIRST_DAY, 14)
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        collected = workspace.collect(instance, window[0], window[-1])
        assert collected.success
        checklist = collected.asset_materializations_for_node("deidentified_records")[0].metadata
        assert "HIPAA Safe Harbor identifier" in checklist["safe_harbor_checklist"].value
        result = workspace.run("training_job", instance, partition_key=window[-1])
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        warnings = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert warnings["budget_not_near_exhaustion"] is True
        assert "t_closeness" not in warnings  # not set by the policy: skipped, not passed
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        page = Path(evaluations["cleaned_records_expectations"].metadata["data_quality_page"].value)
        assert page.is_file() and "expect_column_values_to_not_be_null" in page.read_text()
        status = result.asset_materializations_for_node("compliance_status")[0].metadata
        assert status["mlflow_run"].value.startswith("http") and "report_in_mlflow" in status
        _inspect_with_the_cli(monkeypatch, instance, workspace, window[-1])
    released = pd.read_parquet(workspace.home / "assets" / "anonymized_records" / f"{window[-1]}.parquet")
    assert "record_id" not in released.columns and "event_date" not in released.columns
    assert released["zip"].astype(str).str.fullmatch(r"\d{3}|\d{2}\*|\d\*\*|\*").all()
    evidence = _evidence(workspace.home, window[-1])
    assert evidence["policy"]["regulation"] == "HIPAA" and evidence["decision"]["promoted"] is True
    # dp_model stored the serving spec with the promoted version: ppml serve replays ZIP3's released prefix rule
    from ppml.serving.registry import load_production

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace.home / 'mlflow' / 'mlflow.db'}")
    served = load_production(client, "ppml-adult-income-hipaa")
    assert served.spec["generalization"]["zip"]["rule"]["type"] == "prefix" and "zip" in served.builder.columns
    deidentified = pd.read_parquet(workspace.home / "assets" / "deidentified_records" / f"{window[-1]}.parquet")
    replayed = {served.builder.released_values(r)["zip"] for r in deidentified.head(200).to_dict("records")}
    assert replayed <= set(released["zip"].astype(str)) | {"*"}
    _assert_mlflow_holds_the_evidence(client, evidence, window)
    linked = {c["name"]: c["page"] for c in evidence["data_quality_checks"]}
    assert linked["cleaned_records_expectations"] == str(page)
    assert f'href="file://{page}"' in (workspace.home / "reports" / window[-1] / "report.html").read_text()

    # the signed evidence pack: verifies, names a changed byte of a day's de-identified records, tags the version
    report_dir = workspace.home / "reports" / window[-1]
    first_day = workspace.home / "assets" / "deidentified_records" / f"{window[0]}.parquet"
    assert_pack_verifies_then_names_a_changed_byte(report_dir, first_day, f"deidentified_records/{window[0]}")
    root = json.loads((report_dir / "evidence_pack.json").read_text())["root_sha256"]
    version = client.get_model_version("ppml-adult-income-hipaa", str(evidence["decision"]["version"]))
    assert version.tags["ppml.evidence_root_sha256"] == root


def _inspect_with_the_cli(monkeypatch: pytest.MonkeyPatch, instance, workspace, as_of: str) -> None:  # type: ignore[no-untyped-def]
    """`ppml status`, `ppml ledger` and `ppml report` (in-process) on the workspace this test just ran."""
    from typer.testing import CliRunner

    from ppml.cli import app

    monkeypatch.setenv("PPML_HOME", str(workspace.home))
    monkeypatch.setenv("DAGSTER_HOME", instance.root_directory)
    monkeypatch.setenv("PPML_LEDGER_URL", workspace.resources["ledger"].url)
    monkeypatch.setenv("PPML_POLICY", str(workspace.policy))
    runner = CliRunner()
    status = runner.invoke(app, ["status"])
    assert status.exit_code == 0, status.output
    assert "training_job" in status.output and f"compliance as of {as_of}:" in status.output
    assert "left ε" in status.output and all(len(line) <= 80 for line in status.output.splitlines())
    ledger = runner.invoke(app, ["ledger"])
    assert ledger.exit_code == 0 and "completed" in ledger.output, ledger.output
    report = workspace.home / "reports" / as_of / "rerendered" / "report.html"
    rendered = runner.invoke(app, ["report", "--as-of", as_of])
    assert rendered.exit_code == 0 and str(report) in rendered.output.replace("\n", ""), rendered.output
    assert stat.S_IMODE(report.stat().st_mode) == 0o600  # the signed original is verified afterwards, unchanged


def _assert_mlflow_holds_the_evidence(client: MlflowClient, evidence: dict, window: list[str]) -> None:
    """Test, attack and audit metrics on the training run; the audit as its own run; the report and evidence
    attached; a compact window tag; the model version described."""
    run = client.get_run(evidence["training"]["mlflow_run_id"])
    for metric in ("test_accuracy", "test_roc_auc", "mia_strongest_auc", "compliance_checks_passed"):
        assert metric in run.data.metrics, metric
    assert run.data.metrics["test_accuracy"] == evidence["model_evaluation"]["dp"]["accuracy"]
    assert run.data.tags["ppml.window"] == f"{window[0]}..{window[-1]} ({len(window)} days)"
    assert "ppml.partitions" not in run.data.tags
    attached = {a.path for a in client.list_artifacts(run.info.run_id, "compliance")}
    assert attached == {"compliance/report.html", "compliance/evidence.json"}
    version = client.get_model_version(evidence["training"]["model_name"], str(evidence["training"]["model_version"]))
    assert "requirements passed" in version.description and "epsilon" in version.description
    assert float(version.tags["ppml.test_accuracy"]) == pytest.approx(run.data.metrics["test_accuracy"], rel=1e-5)


def _assert_the_audit_is_its_own_mlflow_run(client: MlflowClient, evidence: dict) -> None:
    """The audit trains on real records and spends epsilon: its own run beside the runs it audits, its bound
    also on the audited run and the model version."""
    trained = client.get_run(evidence["training"]["mlflow_run_id"])
    audit = client.get_run(evidence["audit"]["mlflow_run_id"])
    assert audit.data.tags["ppml.role"] == "audit" and audit.data.tags["ppml.audited_run_id"] == trained.info.run_id
    assert audit.data.tags["mlflow.parentRunId"] == evidence["training"]["mlflow_parent_run_id"]
    assert audit.data.metrics["audit_epsilon_lower_bound"] == pytest.approx(evidence["audit"]["epsilon_lower_bound"])
    assert trained.data.metrics["audit_epsilon_lower_bound"] == audit.data.metrics["audit_epsilon_lower_bound"]
    version = client.get_model_version(evidence["training"]["model_name"], str(evidence["training"]["model_version"]))
    assert "empirical epsilon lower bound" in version.description


def _overfit_non_private_model():  # type: ignore[no-untyped-def]
    """A stand-in for a broken training stage: a wide non-private MLP trained to memorise, claiming DP anyway."""
    from ppml.deployment import register_version
    from ppml.tracking import TrainingTracker
    from ppml.training import ModelSpec, TrainingConfig, train_non_private
    from ppml_assets.common import feature_splits
    from ppml_assets.settings import daily_partitions

    @asset(name="dp_model", partitions_def=daily_partitions, group_name="training")
    def overfit_model(training_features: pd.DataFrame, mlflow: MlflowResource) -> dict:
        splits = feature_splits(training_features)
        config = TrainingConfig(
            model=ModelSpec(kind="mlp", hidden_sizes=(256, 256)),
            epochs=150,
            batch_size=32,
            learning_rate=3e-3,
            optimizer="adam",
            seed=0,
        )
        model = train_non_private(splits["train"], config)
        mlflow.configure()
        tracker = TrainingTracker(mlflow.tracking_uri, experiment_name=mlflow.experiment_name)
        run_id = tracker.start_run("overfit-non-private")
        uri = tracker.log_model(run_id, model)
        tracker.end_run(run_id)
        version = register_version(mlflow.client(), "ppml-adult-income-gdpr", uri, run_id, {})
        return {
            "model": "mlp(256x256)",
            "model_name": "ppml-adult-income-gdpr",
            "model_version": version,
            "model_uri": uri,
            "mlflow_run_id": run_id,
            "epsilon": 1.0,
            "delta": 1e-5,
            "target_epsilon": 1.0,
            "noise_multiplier": 0.0,
            "sample_rate": 0.1,
            "steps": 1,
            "epochs": 150,
            "learning_rate": 3e-3,
            "max_grad_norm": 1.0,
            "accountant": "claimed",
            "candidates_trained": 1,
            "ledger": {
                "spent_before": 0.0,
                "charged": 0.0,
                "spent_after": 0.0,
                "lifetime_budget": 8.0,
                "remaining": 8.0,
                "scope_label": "-",
                "composition": "-",
            },
        }

    return overfit_model


def test_overfitted_non_private_model_fails_the_mia_gate_and_is_not_promoted(
    tmp_path: Path, landing_zone: Path
) -> None:
    from ppml_assets.definitions import defs

    # Permissive data preparation (k=2, every feature admitted at full resolution) leaves records distinct
    # enough to be memorised; with the bundled policy's k=5 release the features themselves hide members.
    policy = write_policy(
        tmp_path,
        evaluation__audit_canaries=0,
        evaluation__reference_models=0,
        training__train_non_private_baseline=False,
        privacy__k=2,
        privacy__l_diversity=[],
        privacy__max_reidentification_risk=0.5,
        preparation__max_share_below_k=1.0,
        # and every released column kept exact (the policy declares it unknown to an attacker)
        release__columns={
            column: "keep"
            for column in [
                "fnlwgt",
                "education_num",
                "capital_gain",
                "capital_loss",
                "hours_per_week",
                "relationship",
                "occupation",
                "income",
            ]
        },
    )
    workspace = graph_workspace(tmp_path / "home", landing_zone, policy)
    as_of = TEST_FIRST_DAY  # a one-day window: a small sample
    assets = [a for a in defs.assets if AssetKey("dp_model") not in a.keys] + [_overfit_non_private_model()]
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        assert workspace.collect(instance, as_of, as_of).success
        selection = [
            "anonymized_records",
            "cleaned_records",
            "training_features",
            "dp_model",
            "non_private_baseline",
            "model_evaluation",
            "privacy_evaluation",
            "privacy_audit",
            "privacy_budget",
            "compliance_status",
            "registered_model",
            "compliance_report",
        ]
        result = materialize(
            [*assets, *defs.asset_checks],
            instance=instance,
            resources=workspace.resources,
            partition_key=as_of,
            selection=selection,
            raise_on_error=False,
        )
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert evaluations["membership_inference_auc"].passed is False
        assert instance.get_materialized_partitions(AssetKey("registered_model")) == set()
    evidence = _evidence(workspace.home, as_of)
    assert evidence["decision"]["promoted"] is False
    assert "membership_inference_auc" in evidence["decision"]["failing_checks"]
    client = MlflowClient(tracking_uri=workspace.resources["mlflow"].tracking_uri)
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias("ppml-adult-income-gdpr", "production")
    version = client.get_model_version("ppml-adult-income-gdpr", evidence["decision"]["version"])
    assert version.tags["ppml.promotion"] == "refused"
    assert "membership_inference_auc" in version.tags["ppml.failing_checks"]


def test_broken_dp_training_is_caught_by_the_empirical_audit(tmp_path: Path, landing_zone: Path) -> None:
    policy = write_policy(
        tmp_path, evaluation__audit_canaries=1000, evaluation__reference_models=0, **SMALL_WINDOW_SETTINGS
    )
    workspace = graph_workspace(tmp_path / "home", landing_zone, policy)
    window = days(TEST_FIRST_DAY, 14)
    broken = {
        "ops": {"privacy_audit": {"config": {"noise_multiplier_override": 0.0}}},
        "loggers": {"console": {"config": {"log_level": "WARNING"}}},
    }
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        assert workspace.collect(instance, window[0], window[-1]).success
        result = workspace.run("training_job", instance, partition_key=window[-1], run_config=broken)
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert evaluations["empirical_epsilon_audit"].passed is False
        assert instance.get_materialized_partitions(AssetKey("registered_model")) == set()
    evidence = _evidence(workspace.home, window[-1])
    assert evidence["audit"]["alarm"] is True and evidence["audit"]["fault_injection"] == 0.0
    assert evidence["audit"]["epsilon_lower_bound"] > evidence["audit"]["claimed_epsilon"]
    assert "empirical_epsilon_audit" in evidence["decision"]["failing_checks"]
    _assert_the_audit_is_its_own_mlflow_run(MlflowClient(workspace.resources["mlflow"].tracking_uri), evidence)
    # the refused version's signed evidence pack comes from the gate itself (nothing after it ran)
    from ppml.evidence.verify import verify_pack

    report_dir = workspace.home / "reports" / window[-1]
    assert verify_pack(report_dir).ok
    assert json.loads((report_dir / "evidence_pack.json").read_text())["model"]["status"] == "refused"
    assert (report_dir / "documents" / "dpia.html").is_file() and (report_dir / "report.pdf").is_file()
