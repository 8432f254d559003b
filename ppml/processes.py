"""Child servers that stop with their parent: SIGINT, SIGTERM and SIGHUP stop every child's process group.

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


class StopRequested(Exception):
    """Raised in the main thread when a stop signal arrives."""

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
