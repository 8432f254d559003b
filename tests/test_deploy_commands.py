"""`ppml deploy prepare-storage`, and `ppml deploy bootstrap`'s refusals (its runs through the queue: test_deploy.py).

Each bad input ends in one line naming the file, the field and the fix, before any run is submitted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from ppml.cli import app
from tests.support import GDPR_POLICY, HIPAA_POLICY


def _one_line(output: str, field: str) -> str:
    text = " ".join(output.split())
    assert "Traceback" not in output and text.startswith("error:"), output
    assert f"field '{field}'" in text and "fix:" in text, text
    return text


@pytest.fixture
def embedded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private embedded workspace: SQLite Dagster instance (no run queue), MLflow store and ledger."""
    from ppml.workspace import EMBEDDED_DAGSTER_YAML

    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(EMBEDDED_DAGSTER_YAML.format(base_dir=dagster_home / "storage"))
    monkeypatch.setenv("PPML_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    # MLFLOW_TRACKING_URI stays the session's store: its migrations (the slow part) run once per session.
    monkeypatch.setenv("PPML_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    # the CLI sets PPML_POLICY in this process: registered first, so that teardown removes it again
    monkeypatch.setenv("PPML_POLICY", "")
    monkeypatch.delenv("PPML_POLICY")
    return tmp_path


def test_prepare_storage_creates_every_store_of_the_workspace(embedded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a store of its own: the session's MLflow store may already exist (another test created it), and then this
    # call would rightly not list it as prepared
    mlflow_uri = f"sqlite:///{embedded / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    prepared = CliRunner().invoke(app, ["deploy", "prepare-storage"])
    assert prepared.exit_code == 0, prepared.output
    assert "Storage ready: Dagster instance storage, MLflow tracking store, privacy-budget ledger" in " ".join(
        prepared.output.split()
    )
    for url, table in [(f"sqlite:///{embedded / 'ledger.db'}", "ppml_ledger_runs"), (mlflow_uri, "alembic_version")]:
        engine = sa.create_engine(url)
        assert table in sa.inspect(engine).get_table_names()
        engine.dispose()
    assert (embedded / "dagster" / "storage" / "history" / "runs.db").is_file()


@pytest.mark.parametrize(
    ("arguments", "environment", "field"),
    [
        (["--through", "everything"], {}, "--through"),
        (["--through", "policy"], {"PPML_POLICY": str(HIPAA_POLICY)}, "PPML_POLICY"),
        (["--as-of", "30/04/2026"], {}, "--as-of"),
    ],
    ids=["unknown-step", "another-policy-than-the-deployment-serves", "malformed-as-of"],
)
def test_bootstrap_bad_input_is_one_line(
    embedded: Path, monkeypatch: pytest.MonkeyPatch, arguments: list[str], environment: dict[str, str], field: str
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["deploy", "bootstrap", "--policy", str(GDPR_POLICY), *arguments])
    assert result.exit_code == 2, result.output
    _one_line(result.output, field)
    assert not (embedded / "dagster" / "storage").exists()  # refused before storage or any run


def test_bootstrap_refuses_a_policy_file_that_does_not_load(embedded: Path) -> None:
    missing = embedded / "nowhere.yaml"
    result = CliRunner().invoke(app, ["deploy", "bootstrap", "--policy", str(missing)])
    assert result.exit_code == 2, result.output
    assert str(missing) in " ".join(result.output.split())
    assert not (embedded / "dagster" / "storage").exists()
