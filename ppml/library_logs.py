"""Library log lines (MLflow's table creation, Alembic's migrations, GX's temporary folders, Dagster's step
notes, Python warnings) go to an owner-only file, ``$PPML_HOME/logs/ppml.log``, never to the console.

Why: the console is the operator's -- one line per outcome, as the CLI promises -- and a library line can name
paths or values that belong in a private file, not in a terminal scroll-back or a CI log. The file is created
on the first line written (a command that logs nothing leaves nothing behind), 0600 in a 0700 folder.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

LOG_NAME = "ppml.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class PrivateFileHandler(logging.FileHandler):
    """A FileHandler that creates its folder (0700) and file (0600) on the first record."""

    def _open(self):  # type: ignore[no-untyped-def]
        folder = Path(self.baseFilename).parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(descriptor, "a", encoding=self.encoding or "utf-8")


def library_log_path(home: Path | None = None) -> Path:
    base = home or Path(os.environ.get("PPML_HOME") or Path.cwd() / ".ppml")
    return Path(base).resolve() / "logs" / LOG_NAME


def route_library_logs(home: Path | None = None) -> Path:
    """Send every library logger (through the root logger) and Python warnings to the private log file.

    MLflow is told not to install its own console handler (``MLFLOW_CONFIGURE_LOGGING=false``, read when mlflow
    is imported), so its lines propagate here too; a console handler a library put on the root logger is
    removed, and with this handler in place a later ``logging.basicConfig`` (opacus calls it when imported) does
    nothing. Idempotent: a second call keeps one handler."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    path = library_log_path(home)
    root = logging.getLogger()
    for handler in list(root.handlers):  # e.g. opacus calls logging.basicConfig(stream=sys.stderr) on import
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (sys.stderr, sys.stdout):
            root.removeHandler(handler)
    for handler in root.handlers:
        if isinstance(handler, PrivateFileHandler) and Path(handler.baseFilename) == path:
            return path
    handler = PrivateFileHandler(path, delay=True)
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    logging.captureWarnings(True)
    return path
