"""CLI conventions: --version, enums as choices, errors printed literally and all at once, the inspection commands'
refusals, and library log lines kept off the console. In-process (typer's CliRunner) where possible: seconds."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests.support import GDPR_POLICY, REPO_ROOT


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PPML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.delenv("PPML_POLICY", raising=False)
    from ppml.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_version(cli) -> None:  # type: ignore[no-untyped-def]
    from ppml import __version__

    result = cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"ppml {__version__}"


def test_every_policy_error_at_once_printed_literally(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["name"] = "Bad Name!"
    document["privacy"]["k"] = 0
    document["privacy"]["epsilon"] = -1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(document))
    result = cli("validate-policy", str(bad))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    fields = [line.split("field '")[1].split("'")[0] for line in lines]
    assert sorted(fields) == ["name", "privacy.epsilon", "privacy.k"], result.output
    assert all(f"{bad}: field" in line and "fix:" in line for line in lines)
    assert "pattern '^[a-z0-9][a-z0-9_-]{2,63}$'" in result.output  # rich markup would eat '[a-z0-9]'


def test_enums_are_choices(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("anonymize", "--input", "x.csv", "--out", "y.csv", "--report", "z.json", "--metric", "bogus")
    assert result.exit_code == 2
    (line,) = result.output.splitlines()  # one line, like every other bad input
    assert line.startswith("error: command line: field '--metric': 'bogus' is not one of 'loss', 'discernibility'")
    assert "fix: see" in line
    for option, choices in (("--l-variant", "'distinct', 'entropy', 'recursive'"), ("--t-variant", "'equal'")):
        refused = cli("anonymize", "--input", "x.csv", "--out", "y.csv", "--report", "z.json", option, "bogus")
        assert refused.exit_code == 2 and choices in refused.output and len(refused.output.splitlines()) == 1


def test_inspection_commands_refuse_an_empty_workspace_in_one_line(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for command in (["status"], ["ledger"], ["report", "--as-of", "2026-04-30"]):
        result = cli(*command)
        assert result.exit_code == 2, (command, result.output)
        message = " ".join(result.output.split())
        assert message.startswith("error: ") and "no ppml workspace here" in message and "fix:" in message


def test_report_names_the_days_it_has(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "home" / "dagster").mkdir(parents=True)
    (tmp_path / "home" / "reports" / "2026-04-29").mkdir(parents=True)
    (tmp_path / "home" / "reports" / "2026-04-29" / "evidence.json").write_text("{}")
    result = cli("report", "--as-of", "2026-04-30")
    assert result.exit_code == 2
    assert "no evidence for 2026-04-30 (days with a report: 2026-04-29)" in " ".join(result.output.split())
    assert cli("report", "--as-of", "30.04.2026").exit_code == 2


def test_library_log_lines_go_to_the_private_log_file(tmp_path: Path) -> None:
    """MLflow announces its table creation; with the routing it reaches the owner-only file, not the console."""
    script = (
        "import logging, sys; logging.basicConfig(stream=sys.stderr);"  # what opacus does when imported
        "from ppml.library_logs import route_library_logs; route_library_logs();"
        "logging.basicConfig(stream=sys.stderr);"
        "logging.getLogger('great_expectations.x').info('Created temporary directory for ephemeral docs site');"
        "import warnings; warnings.warn('a library warning');"
        "from mlflow import MlflowClient;"
        f"MlflowClient(tracking_uri='sqlite:///{tmp_path}/mlflow.db').search_experiments()"
    )
    env = {**os.environ, "PPML_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MLFLOW_CONFIGURE_LOGGING", None)
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout == "" and completed.stderr == ""
    log = tmp_path / "home" / "logs" / "ppml.log"
    text = log.read_text()
    assert "Creating initial MLflow database tables" in text and "a library warning" in text
    assert "ephemeral docs site" in text
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_the_progress_line_keeps_steps_and_elapsed_time_within_80_columns() -> None:
    from rich.console import Console

    from ppml_assets.demo import lifecycle_progress

    console = Console(width=80, record=True, force_terminal=True, color_system=None)
    progress = lifecycle_progress(console)
    task = progress.add_task("3/3 anonymization .. compliance report: dp_model · candidate 3 epoch 7/10 eps 0.61")
    progress.update(task, completed=12)
    console.print(progress.make_tasks_table(progress.tasks))
    lines = [line for line in console.export_text().splitlines() if line.strip()]
    assert len(lines) == 1 and len(lines[0]) <= 80
    assert "12 steps" in lines[0] and "0:00:0" in lines[0] and "…" in lines[0]


def test_a_federated_policy_is_refused_by_the_central_lifecycle(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The central graph would pool the sites' records: `ppml run` and a PPML_POLICY_DIR location refuse it."""
    from ppml.errors import PPMLError
    from ppml_assets.graph import discover_policy_graphs

    federated = REPO_ROOT / "policies" / "adult_federated.yaml"
    result = cli("run", "--policy", str(federated), "--landing-zone", str(tmp_path))
    assert result.exit_code != 0
    (line,) = result.output.splitlines()
    assert "field 'training.mode'" in line and "fix: run it from the federated code location" in line
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "federated.yaml").write_text(federated.read_text())
    with pytest.raises(PPMLError, match=r"training\.mode"):
        discover_policy_graphs(folder)
