"""Error types shared by every engine.

Every error a user can cause by bad input is a :class:`PPMLError` whose message is one line naming the file (or
data set), the field and the fix, so that an operator can act on it without reading a traceback.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from datetime import UTC, datetime
from pathlib import Path


class PPMLError(ValueError):
    """Bad input or a refused operation, explained in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class PPMLErrors(PPMLError):
    """Several problems found by one validation, reported at once: one complete line per problem (``lines``);
    ``str()`` is the first line and how many more there are, for places that show a single line."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = [" ".join(line.split()) for line in lines]
        more = len(self.lines) - 1
        super().__init__(self.lines[0] + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""))


def error_lines(error: BaseException) -> list[str]:
    """Every line of an error a user should see: each problem of a PPMLErrors, else its one line."""
    return list(error.lines) if isinstance(error, PPMLErrors) else [str(error)]


def input_error(source: str, field: str, problem: str, fix: str) -> PPMLError:
    """Build the canonical one-line message: ``<source>: field '<field>': <problem>; fix: <fix>``."""
    return PPMLError(f"{source}: field '{field}': {problem}; fix: {fix}")


def _log_dir() -> Path:
    home = Path(os.environ.get("PPML_HOME") or Path.cwd() / ".ppml")
    return home / "logs"


def write_trace_log(error: BaseException, text: str | None = None) -> Path:
    """Write the full trace (or ``text``) to ``$PPML_HOME/logs/ppml-<UTC time>.log``, owner-only; return its path.

    The operator sees one line; whoever debugs reads the file. It stays owner-only because a trace can quote
    data values. Falls back to the temporary folder when PPML_HOME is not writable.
    """
    body = text if text is not None else "".join(traceback.format_exception(error))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    for folder in (_log_dir(), Path(tempfile.gettempdir()) / f"ppml-logs-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = folder / f"ppml-{stamp}.log"
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(body)
        return path
    return Path(os.devnull)


def describe_unexpected(error: BaseException, log: Path) -> str:
    """One line for an error that is not a PPMLError: the file and fix when it is an OS error, else its type."""
    first = (str(error).strip().splitlines() or [""])[0][:300]
    if isinstance(error, OSError) and error.filename is not None:
        problem = error.strerror or type(error).__name__
        message = (
            f"{error.filename}: field '(file)': {problem}; fix: check that the path exists and that you may "
            "read or write it"
        )
    else:
        message = (
            f"(internal): field '{type(error).__name__}': {first or 'unexpected error'}; fix: see the full trace, "
            "and report it if the input looks right"
        )
    return " ".join(f"{message} (full trace: {log})".split())
