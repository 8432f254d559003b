"""Per-epoch training progress for whoever watches in this process (the CLI's progress display).

Why a process-level listener list rather than a logger: the CLI runs the Dagster job in-process, and a training
can take minutes of epochs; the operator should see the epoch, the epsilon spent so far and the validation
accuracy while it runs, without library log lines on the console. Only aggregates are reported.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

_listeners: list[Callable[[str], None]] = []
_lock = threading.Lock()


def add_listener(listener: Callable[[str], None]) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Callable[[str], None]) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def epoch_line(candidate: int, epoch: int, epochs: int, epsilon: float | None, accuracy: float | None) -> str:
    """``candidate 1 epoch 3/10 eps 0.41 val acc 0.83`` (short: it shares an 80-column line)."""
    parts = [f"candidate {candidate + 1} epoch {epoch}/{epochs}"]
    if epsilon is not None:
        parts.append(f"eps {epsilon:.2f}")
    if accuracy is not None:
        parts.append(f"val acc {accuracy:.2f}")
    return " ".join(parts)


def report_epoch(candidate: int, epoch: int, epochs: int, epsilon: float | None, accuracy: float | None) -> None:
    """Tell every listener; a listener's failure never disturbs the training."""
    line = epoch_line(candidate, epoch, epochs, epsilon, accuracy)
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        with contextlib.suppress(Exception):
            listener(line)
