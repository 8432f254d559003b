"""The fault suite: a real `ppml run` killed at every stage, stopped with SIGTERM, refused when MLflow does not
answer or the artifact store is unwritable, and refused while another run holds the workspace.

One prepared workspace, one chain: each link is a fresh `ppml run` that first proves the previous kill was
reconciled (its lines) and passes the stage the previous one died in, then is killed at the next stage (kill
points found by watching the run's event log, never by a hook). The last link completes; the ledger, the
registry and the files are asserted afterwards.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from tests.graph_support import write_policy
from tests.support import TEST_FIRST_DAY, cli_environment, days

AS_OF = days(TEST_FIRST_DAY, 3)[-1]
#: (stage, the step whose start is the kill point, the signal)
CHAIN = [
    ("collection", "raw_records", signal.SIGKILL),
    ("de-identification", "deidentified_records", signal.SIGKILL),
    ("anonymization", "anonymized_records", signal.SIGKILL),
    ("training (SIGTERM)", "dp_model", signal.SIGTERM),
    ("training", "dp_model", signal.SIGKILL),
    ("evaluation", "model_evaluation", signal.SIGKILL),
    # compliance_status always runs (it writes the report itself when the gate refuses); compliance_report only
    # after a pass, which 3 days of data do not always give
    ("gate and report", "compliance_status", signal.SIGKILL),
]
TRAINING_STAGES = {"dp_model"}


class Workspace:
    def __init__(self, tmp_path: Path, landing: Path) -> None:
        self.home = tmp_path / "home"
        self.landing = landing
        self.policy = write_policy(
            tmp_path,
            collection__training_window_days=3,
            evaluation__audit_canaries=0,
            evaluation__reference_models=0,
            evaluation__gradient_canaries=0,
            training__epochs=1,
            training__train_non_private_baseline=False,
        )
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self._instance: DagsterInstance | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return cli_environment(self.home, PYTHONUNBUFFERED="1", **extra)

    def start(self, name: str, **extra: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        command = [str(Path(sys.executable).parent / "ppml"), "run", "--policy", str(self.policy)]
        command += ["--landing-zone", str(self.landing), "--as-of", AS_OF]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                command, stdout=stdout, stderr=stderr, env=self.env(**extra), cwd=self.home.parent
            )
        return process, out, err

    def run(self, name: str, timeout: float = 600, **extra: str) -> tuple[int, str, str]:
        process, out, err = self.start(name, **extra)
        code = process.wait(timeout=timeout)
        return code, out.read_text(), err.read_text()

    def instance(self) -> DagsterInstance:
        if self._instance is None:
            self._instance = DagsterInstance.from_config(str(self.home / "dagster"))
        return self._instance

    def step_started(self, step: str) -> bool:
        try:
            runs = self.instance().get_runs(limit=1)
            if not runs:
                return False
            records = self.instance().get_records_for_run(runs[0].run_id, of_type=DagsterEventType.STEP_START).records
        except Exception:  # the subprocess is writing: look again
            return False
        return any(r.event_log_entry.step_key == step for r in records)

    def ledger_runs(self) -> list:  # type: ignore[type-arg]
        from ppml.ledger import PrivacyLedger

        path = self.home / "dagster" / "privacy_ledger.db"
        if not path.is_file():
            return []
        ledger = PrivacyLedger(f"sqlite:///{path}", migrate=False)
        try:
            return ledger.runs()
        except Exception:
            return []
        finally:
            ledger.close()

    def pre_charged_training(self) -> bool:
        return any(r.kind == "dp" and r.status == "running" and r.steps_charged > 0 for r in self.ledger_runs())


def _wait(predicate, process: subprocess.Popen[bytes], what: str, timeout: float = 400) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            raise AssertionError(f"ppml run ended (rc {process.returncode}) before {what}")
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _one_line(stderr: str, prefix: str = "error:") -> str:
    """ppml's own line on stderr (libraries' INFO logs aside): exactly one, no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-3000:]
    return lines[0]


def _quick_refusals(workspace: Workspace, tmp_path: Path) -> None:
    """MLflow that does not answer and an artifact store that cannot be written: one line, nothing charged."""
    code, _out, err = workspace.run("mlflow-unreachable", MLFLOW_TRACKING_URI="http://127.0.0.1:9", timeout=120)
    message = _one_line(err)
    assert code == 2 and "field 'MLFLOW_TRACKING_URI': the MLflow tracking store does not answer" in message
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _out, err = workspace.run("artifacts-unwritable", PPML_MLFLOW_ARTIFACTS=str(blocker / "artifacts"))
    message = _one_line(err)
    assert code == 2 and "field 'PPML_MLFLOW_ARTIFACTS': the MLflow artifact store is not writable" in message
    assert workspace.ledger_runs() == []  # nothing reserved, nothing charged
    assert not (workspace.home / "assets").exists()


@pytest.mark.slow
def test_kill_at_every_stage_then_the_rerun_completes(tmp_path: Path, landing_zone: Path) -> None:
    workspace = Workspace(tmp_path, landing_zone)
    _quick_refusals(workspace, tmp_path)
    charged_before: dict[str, float] = {}
    previous: str | None = None
    for index, (stage, step, signum) in enumerate(CHAIN):
        process, out, err = workspace.start(f"{index}-{step}")
        # the instance is opened here only once the run has created its storage
        _wait(lambda out=out: "Training as of" in out.read_text(), process, "the run to start")
        if stage == "gate and report":  # a second run while this one holds the workspace: refused, naming it
            _wait(lambda: workspace.step_started("anonymized_records"), process, "the training run")
            code, _o, second = workspace.run("concurrent", timeout=120)
            assert code == 2 and f"the workspace is in use by ppml run (pid {process.pid}, started" in second
        _wait(lambda step=step: workspace.step_started(step), process, f"{step} to start ({stage})")
        if step in TRAINING_STAGES:
            _wait(workspace.pre_charged_training, process, "the training's first pre-charge")
        process.send_signal(signum)
        code = process.wait(timeout=120)
        stdout, stderr = out.read_text(), err.read_text()
        if previous is not None:  # this start reconciled what the previous kill left
            assert "reconciled: Dagster: 1 run(s) left STARTED by a process that is gone marked failed" in stdout, (
                previous,
                stdout[-2000:],
            )
        if signum == signal.SIGTERM:
            assert code == 128 + signal.SIGTERM, stderr
            line = _one_line(stderr, "stopped:")
            assert line.startswith("stopped: 3/3") and "SIGTERM received" in line and "marked canceled" in line
            assert "keep their pre-charge" in line and "ended as KILLED" in line
            assert not [r for r in workspace.ledger_runs() if r.status == "running"]
            previous = None  # nothing stale: it cleaned up itself
        else:
            assert code == -signal.SIGKILL
            previous = stage
        for run in workspace.ledger_runs():  # never un-charged
            assert (run.epsilon_charged or 0.0) >= charged_before.get(run.id, 0.0) - 1e-12
            charged_before[run.id] = run.epsilon_charged or 0.0
        if stage == "evaluation":
            trainings_done = [r.id for r in workspace.ledger_runs() if r.kind == "dp" and r.status == "completed"]
            assert trainings_done

    code, stdout, stderr = workspace.run("final")
    # the lifecycle reaches the report; on 3 days a DP model may or may not pass the gate (exit 0 or 1)
    assert code in (0, 1) and "Compliance report:" in stdout, stdout[-3000:] + stderr[-3000:]
    assert "reconciled: Dagster: 1 run(s) left STARTED" in stdout and "took over the workspace lock" in stdout
    _assert_consistent(workspace, trainings_done)


def _assert_consistent(workspace: Workspace, trainings_done: list[str]) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    instance = workspace.instance()
    statuses = [run.status for run in instance.get_runs()]
    assert DagsterRunStatus.STARTED not in statuses and DagsterRunStatus.STARTING not in statuses
    assert statuses.count(DagsterRunStatus.FAILURE) >= len(CHAIN) - 1
    assert statuses.count(DagsterRunStatus.CANCELED) == 1
    runs = workspace.ledger_runs()
    assert not [r for r in runs if r.status == "running"]
    # the completed training was reused by the report's rerun and the final one: never trained (charged) again
    assert [r.id for r in runs if r.kind == "dp" and r.status == "completed"] == trainings_done
    client = MlflowClient(tracking_uri=workspace.env()["MLFLOW_TRACKING_URI"])
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    assert not client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")
    (version,) = client.search_model_versions("name = 'ppml-adult-income-gdpr'")  # one training, one version
    evidence = json.loads((workspace.home / "reports" / AS_OF / "evidence.json").read_text())
    assert str(evidence["decision"]["version"]) == str(version.version)
    assets = workspace.home / "assets"
    assert not list(assets.rglob("*.tmp")) and not list((assets / "raw_records").glob("*.parquet"))
    assert len(list((assets / "identifier_reference").glob("*.fernet"))) == 3
    assert (workspace.home / "reports" / AS_OF / "report.html").is_file()
