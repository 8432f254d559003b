"""Who owns a running ledger run: ``host:pid:start-ticks``, and whether that process is still alive.

Taking over a crashed request (:meth:`~ppml.ledger.store.PrivacyLedger.take_over`) must never steal a run from a
live training (it would then be trained twice and counted once); the start time in clock ticks tells a reused pid
from the original process.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path


def _process_start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None  # field 22 of stat: start time in clock ticks


def _process_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def this_owner() -> str:
    """This process, as the ledger records an owner."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start_ticks(pid) or '?'}"


def owner_alive(owner: str | None, heartbeat_unix: float | None, stale_after_s: float) -> bool:
    """Same host: is that very process (pid and start time) still alive? Other host: a recent heartbeat."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text, _, started = rest.partition(":")
    if host == socket.gethostname() and pid_text.isdigit():
        pid = int(pid_text)
        state = _process_state(pid)
        if state is None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        if state in ("Z", "X"):
            return False
        return started in ("?", _process_start_ticks(pid))
    return heartbeat_unix is not None and time.time() - heartbeat_unix < stale_after_s
