"""`ppml run` / `ppml demo` safety: one writer per workspace, stale state reconciled, a stop signal handled.

* **One writer.** The runs hold the workspace lock (`ppml.processes.WorkspaceLock`) from before the first write
  to the end: a second run on the same PPML_HOME is refused in one line naming the holder (pid, start time).
* **Stale state.** At the start (holding the lock), what a killed run left behind is closed, one line each:
  its Dagster runs left STARTED are reported failed, its ledger runs and requests are closed keeping their
  pre-charge (`ppml.stale_state`), its MLflow runs left RUNNING end as KILLED. Runs are recognised by the
  ``ppml/owner`` tag (host:pid:start time) that every run started here carries.
* **Stop signals.** SIGINT, SIGTERM or SIGHUP during a run: the children are stopped, the Dagster run is marked
  canceled, this process's ledger runs are closed keeping what they were pre-charged (a training thread that
  goes on is refused at its next pre-charge, so it cannot spend uncounted), its MLflow runs end as KILLED, one
  line is printed and the process exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from ppml.console_text import labelled
from ppml.errors import PPMLError
from ppml.processes import WorkspaceBusy, WorkspaceLock, process_start_ticks, stop_descendants
from ppml.stale_state import Reconciled, owner_gone, reconcile_ledger, reconcile_mlflow

OWNER_TAG = "ppml/owner"
UNFINISHED = ("NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def this_owner() -> str:
    """host:pid:start ticks, the ledger's own owner format (so one predicate serves both)."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start_ticks(pid) or '?'}"


@contextlib.contextmanager
def one_writer(home: Path, console: Console, command: str) -> Iterator[WorkspaceLock]:
    """Hold the workspace lock for the block; refuse (one line) when another live run holds it."""
    lock = WorkspaceLock(home, command)
    try:
        lock.acquire()
    except WorkspaceBusy as busy:
        raise PPMLError(str(busy)) from None
    try:
        note = lock.takeover_note()
        if note:
            console.print(labelled("note", note), highlight=False)
        yield lock
    finally:
        lock.release()


def _unfinished_runs(instance: Any) -> list[Any]:
    from dagster import DagsterRunStatus, RunsFilter

    statuses = [DagsterRunStatus(name) for name in UNFINISHED]
    return list(instance.get_runs(filters=RunsFilter(statuses=statuses)))


def reconcile_dagster(instance: Any, stale: Callable[[str | None], bool], message: str) -> tuple[set[str], set[str]]:
    """Report failed every unfinished run whose ``ppml/owner`` is stale; return (reconciled, still live) run ids."""
    reconciled, live = set(), set()
    for run in _unfinished_runs(instance):
        owner = run.tags.get(OWNER_TAG)
        if owner is not None and stale(owner):
            instance.report_run_failed(run, message=message)
            reconciled.add(run.run_id)
        else:
            live.add(run.run_id)
    return reconciled, live


def _ledger(ledger_url: str) -> Any | None:
    """The workspace's ledger, or None when it does not exist yet (nothing to reconcile, nothing to create)."""
    from sqlalchemy.engine import make_url

    from ppml.ledger import PrivacyLedger

    url = make_url(ledger_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
        return None
    return PrivacyLedger(ledger_url)


def _reconcile(
    instance: Any,
    ledger_url: str,
    tracking_uri: str,
    stale: Callable[[str | None], bool],
    message: str,
    also_dead: frozenset[str] = frozenset(),
) -> tuple[set[str], Reconciled]:
    """Dagster, ledger and MLflow state of the processes ``stale`` names, closed."""
    from ppml.stale_state import failed_ledger_runs_of

    dead, live = reconcile_dagster(instance, stale, message)
    dead |= also_dead
    live -= also_dead
    done = Reconciled()
    ledger = _ledger(ledger_url)
    if ledger is not None:
        try:
            done = reconcile_ledger(ledger, stale=stale, live_dagster_runs=live, message=message)
            runs_of_dead, requests_of_dead = failed_ledger_runs_of(ledger, dead)
        finally:
            ledger.close()
    else:
        runs_of_dead, requests_of_dead = set(), set()
    reconcile_mlflow(
        tracking_uri,
        ledger_runs={*done.ledger_runs, *runs_of_dead},
        ledger_requests={*done.ledger_requests, *requests_of_dead},
        dagster_runs=dead,
        done=done,
    )
    return dead, done


def reconcile_at_start(instance: Any, ledger_url: str, tracking_uri: str, console: Console) -> list[str]:
    """What killed runs left behind, closed; one line each (printed and returned)."""
    try:
        dead, done = _reconcile(instance, ledger_url, tracking_uri, owner_gone, "reconciled at the next start")
    except PPMLError:
        raise
    except Exception as error:  # an unreachable store is reported by the run's own up-front checks
        line = f"stale state not reconciled: {type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        console.print(labelled("note", line), highlight=False)
        return [line]
    lines = [f"Dagster: {len(dead)} run(s) left STARTED by a process that is gone marked failed"] if dead else []
    lines += done.lines()
    for line in lines:
        console.print(labelled("reconciled", line), highlight=False)
    return lines


def stop_and_exit(
    signum: int,
    current: dict[str, str],
    instance: Any,
    stores: tuple[str, str],
    lock: WorkspaceLock | None,
    stderr_fd: int = 2,
) -> None:
    """A stop signal arrived during a run: stop the children, close this process's state, one line, exit.

    ``stderr_fd`` is a duplicate of the terminal's stderr taken before the runs: while a step runs, Dagster's
    compute-log capture has pointed file descriptor 2 at the step's log file.
    """
    ledger_url, tracking_uri = stores
    for each in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(each, signal.SIG_IGN)  # a second signal must not interrupt the clean-up
    name = signal.Signals(signum).name
    children = stop_descendants()
    me = this_owner()
    message = f"stopped by {name}"
    parts = [f"{children} child process(es) stopped"]
    try:
        run = instance.get_run_by_id(current["run_id"]) if current.get("run_id") else None
        if run is not None and run.status.value in UNFINISHED:
            instance.report_run_canceled(run, message=message)
            parts.append(f"Dagster run {run.run_id[:8]} marked canceled")
        own = frozenset({current["run_id"]}) if current.get("run_id") else frozenset()
        _dead, done = _reconcile(instance, ledger_url, tracking_uri, lambda owner: owner == me, message, own)
        parts += done.lines(whose="of this run")
    except Exception as error:  # best effort: what is left is reconciled at the next start
        parts.append(f"clean-up incomplete ({type(error).__name__}); the next start reconciles the rest")
    if lock is not None:
        lock.release()
    line = (
        f"stopped: {current.get('label', 'ppml run')}: field '(signal)': {name} received; "
        + "; ".join(parts)
        + "; fix: run the same command again (it resumes from what was completed)"
    )
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os.write(stderr_fd, (line + "\n").encode("utf-8", "replace"))  # past any redirection of sys.stderr
    os._exit(128 + signum)  # the run's worker thread cannot be joined; the process ends here


def check_stores(tracking_uri: str, artifact_location: Callable[[], str]) -> None:
    """Before the first step: the MLflow tracking store answers and a local artifact store is writable.

    Otherwise the run would fail only at `dp_model`, after the expensive steps (and, over HTTP, after minutes of
    retries); here it is one line and nothing has been charged.
    """
    _check_tracking(tracking_uri)
    _check_artifacts(artifact_location())  # asked only once the tracking store answered


def _check_tracking(tracking_uri: str) -> None:
    from urllib.parse import urlparse

    scheme = urlparse(tracking_uri).scheme
    try:
        if scheme in ("http", "https"):
            import urllib.request

            with urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=5) as response:
                response.read(64)
        elif scheme and scheme != "file" and not scheme.startswith("sqlite"):
            import sqlalchemy as sa

            engine = sa.create_engine(tracking_uri, pool_pre_ping=True)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
    except Exception as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise PPMLError(
            f"{_redact(tracking_uri)}: field 'MLFLOW_TRACKING_URI': the MLflow tracking store does not answer "
            f"({reason}); fix: start the tracking server or database, or correct MLFLOW_TRACKING_URI"
        ) from None


def _check_artifacts(artifact_location: str) -> None:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(artifact_location)
    if parsed.scheme not in ("", "file"):
        return  # a remote store (s3://, ...) answers for itself
    folder = Path(unquote(parsed.path) if parsed.scheme == "file" else artifact_location)
    probe_at = folder
    while not probe_at.exists() and probe_at != probe_at.parent:
        probe_at = probe_at.parent
    try:
        probe = probe_at / f".ppml-write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise PPMLError(
            f"{folder}: field 'PPML_MLFLOW_ARTIFACTS': the MLflow artifact store is not writable "
            f"({error.strerror or type(error).__name__} on {probe_at}); fix: make it writable by this user, "
            "or point PPML_MLFLOW_ARTIFACTS at a folder that is"
        ) from None


def _redact(uri: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri.split("@")[-1]
