"""Processes: child servers that stop with their parent, descendants to stop on a signal, one writer per workspace.

SIGINT, SIGTERM and SIGHUP stop every child's process group.

`ppml ui` starts Dagster and MLflow, which themselves start a dozen workers each. Each child runs in its own
process group so that one signal reaches all its workers; the parent turns SIGTERM and SIGHUP into the same
orderly shutdown as Ctrl+C (the default action of those signals would end the parent at once and leave every
server listening).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequested(BaseException):
    """Raised in the main thread when a stop signal arrives (a BaseException, like KeyboardInterrupt, so that
    no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signum)


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM/SIGHUP raise StopRequested, so ``finally`` clauses run."""
    previous = {signum: signal.signal(signum, _raise_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start_group(command: Sequence[str], cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a child as the leader of its own process group (and session)."""
    return subprocess.Popen(list(command), cwd=cwd, start_new_session=True)


def stop_groups(processes: Sequence[subprocess.Popen[bytes]], grace_seconds: float = 20.0) -> None:
    """SIGTERM every child's group, wait up to ``grace_seconds`` in all, then SIGKILL what is left."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        while time.monotonic() < deadline and _group_alive(process):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)


def _group_alive(process: subprocess.Popen[bytes]) -> bool:
    """Whether any process of the child's group is left (the leader may exit before its workers)."""
    process.poll()  # reap the leader, so that an exited leader does not count
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------ descendants


def descendants(pid: int | None = None) -> list[int]:
    """Every live descendant of ``pid`` (default: this process), children before grandchildren (/proc)."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    queue = list(children.get(root, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def stop_descendants(grace_seconds: float = 10.0) -> int:
    """SIGTERM every descendant of this process, SIGKILL those left after the grace; return how many there were."""
    found = descendants()
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and any(_pid_alive(pid) for pid in found):
        for pid in found:  # reap our own children so that they do not linger as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return len(found)


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def process_start_ticks(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot: with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def process_alive(pid: int, start_ticks: str | None) -> bool:
    """Whether that very process (pid and start time) is still running on this host."""
    if not _pid_alive(pid):
        return False
    return start_ticks in (None, "?", process_start_ticks(pid))


# ------------------------------------------------------------------------------------- workspace lock


class WorkspaceBusy(Exception):
    """Another live process holds the workspace lock; ``str()`` is the one-line message naming it."""


class WorkspaceLock:
    """One writer per workspace: an exclusive ``flock`` on ``<home>/.ppml.lock`` held for the whole run.

    The kernel drops the lock when its holder dies (kill -9 included), so a lock is never stuck; the file keeps
    the last holder's pid, start time and command so that a refusal can name who holds it and a takeover can
    say whose lock it took over.
    """

    def __init__(self, home: Path, command: str) -> None:
        self.path = Path(home) / ".ppml.lock"
        self.command = command
        self.took_over: dict[str, object] | None = None
        self._handle: int | None = None

    def acquire(self, wait_seconds: float = 0.0) -> WorkspaceLock:
        import fcntl

        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = _read_holder(descriptor)
                    os.close(descriptor)
                    raise WorkspaceBusy(self._busy_message(holder)) from None
                time.sleep(0.5)
        previous = _read_holder(descriptor)
        if previous.get("pid") and not previous.get("released"):
            self.took_over = previous  # the last holder ended without releasing: it was killed
        me = os.getpid()
        holder = {
            "pid": me,
            "start_ticks": process_start_ticks(me),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": os.uname().nodename,
            "command": self.command,
        }
        _write_holder(descriptor, holder)
        self._handle = descriptor
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        import fcntl

        holder = _read_holder(self._handle)
        _write_holder(self._handle, {**holder, "released": True})
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        os.close(self._handle)
        self._handle = None

    def takeover_note(self) -> str | None:
        """The line saying whose stale lock was taken over, if any."""
        if not self.took_over:
            return None
        held = self.took_over
        return (
            f"took over the workspace lock of {held.get('command', 'ppml')} (pid {held.get('pid')}, started "
            f"{held.get('started', '?')}), which ended without releasing it"
        )

    def _busy_message(self, holder: dict[str, object]) -> str:
        who = (
            f"{holder.get('command', 'ppml')} (pid {holder.get('pid')}, started {holder.get('started', '?')} UTC"
            f"{', host ' + str(holder['host']) if holder.get('host') else ''})"
            if holder.get("pid")
            else "another process"
        )
        return (
            f"{self.path.parent}: field '(workspace lock)': the workspace is in use by {who}; fix: wait for it "
            "to finish, or stop it, then run again (one run per PPML_HOME at a time)"
        )

    def __enter__(self) -> WorkspaceLock:
        return self.acquire() if self._handle is None else self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def _read_holder(descriptor: int) -> dict[str, object]:
    import json

    os.lseek(descriptor, 0, os.SEEK_SET)
    text = os.read(descriptor, 4096).decode("utf-8", "replace").strip()
    try:
        holder = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(descriptor: int, holder: dict[str, object]) -> None:
    import json

    os.ftruncate(descriptor, 0)
    os.lseek(descriptor, 0, os.SEEK_SET)
    os.write(descriptor, json.dumps(holder).encode())
    os.fsync(descriptor)
