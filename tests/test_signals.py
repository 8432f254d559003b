"""Long-running commands stop their children on SIGINT, SIGTERM and SIGHUP: no server is left listening."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

BIN = Path(sys.executable).parent

# A parent that supervises like `ppml ui`: two children in their own groups, each with a grandchild.
SUPERVISOR = textwrap.dedent(
    """
    import sys
    from ppml.processes import StopRequested, start_group, stop_groups, stop_signals_raise

    processes = []
    with stop_signals_raise():
        try:
            for _ in range(2):
                processes.append(start_group(["sh", "-c", "sleep 300 & echo $! >> " + sys.argv[1] + "; wait"]))
            print("started", flush=True)
            processes[0].wait()
        except (KeyboardInterrupt, StopRequested):
            pass
        finally:
            stop_groups(processes, grace_seconds=5)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_every_stop_signal_stops_the_grandchildren(tmp_path: Path, signum: signal.Signals) -> None:
    pids_file = tmp_path / "pids"
    parent = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(pids_file)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None and parent.stdout.readline().strip() == "started"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not pids_file.exists() or len(pids_file.read_text().split()) < 2):
        time.sleep(0.05)
    grandchildren = [int(pid) for pid in pids_file.read_text().split()]
    assert len(grandchildren) == 2 and all(_alive(pid) for pid in grandchildren)
    parent.send_signal(signum)
    assert parent.wait(timeout=20) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(pid) for pid in grandchildren):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in grandchildren)


# What `ppml run` does on a stop signal: every descendant (children started in the same group, their children
# too, as torch or a library may start them) is stopped before the process exits with 128 + the signal.
RUNNER = textwrap.dedent(
    """
    import os, subprocess, sys
    from ppml.processes import StopRequested, stop_descendants, stop_signals_raise

    with stop_signals_raise():
        try:
            child = subprocess.Popen(["sh", "-c", "sleep 300 & echo $! >> " + sys.argv[1] + "; wait"])
            print("started", child.pid, flush=True)
            child.wait()
        except StopRequested as stop:
            print("stopped", stop_descendants(grace_seconds=5), flush=True)
            os._exit(128 + stop.signum)
    """
)


def test_a_stopped_run_stops_its_descendants_and_exits_128_plus_the_signal(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(pids_file)],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None
    child = int(runner.stdout.readline().split()[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (pids_file.exists() and pids_file.read_text().strip()):
        time.sleep(0.05)
    grandchild = int(pids_file.read_text().split()[0])
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=20) == 128 + signal.SIGTERM
    assert runner.stdout.read().split() == ["stopped", "2"]
    assert not _alive(child) and not _alive(grandchild)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ppml_ui_stopped_with_sigterm_leaves_no_server_listening(tmp_path: Path) -> None:
    dagster_port, mlflow_port = _free_port(), _free_port()
    env = {**os.environ, "PPML_HOME": str(tmp_path / "home")}
    env.pop("DAGSTER_HOME", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    ui = subprocess.Popen(
        [str(BIN / "ppml"), "ui", "--port", str(dagster_port), "--mlflow-port", str(mlflow_port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # so that the test can clean up whatever a failure leaves
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (_listening(dagster_port) and _listening(mlflow_port)):
            assert ui.poll() is None, "ppml ui exited before its servers listened"
            time.sleep(1)
        assert _listening(dagster_port) and _listening(mlflow_port), "the servers did not start"
        ui.send_signal(signal.SIGTERM)
        assert ui.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (_listening(dagster_port) or _listening(mlflow_port)):
            time.sleep(0.5)
        assert not _listening(dagster_port) and not _listening(mlflow_port)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGKILL)
