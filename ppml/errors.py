"""Error types shared by every engine.

Every error a user can cause by bad input is a :class:`PPMLError` whose message is one line naming the file (or
data set), the field and the fix, so that an operator can act on it without reading a traceback.
"""

from __future__ import annotations


class PPMLError(ValueError):
    """Bad input or a refused operation, explained in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def input_error(source: str, field: str, problem: str, fix: str) -> PPMLError:
    """Build the canonical one-line message: ``<source>: field '<field>': <problem>; fix: <fix>``."""
    return PPMLError(f"{source}: field '{field}': {problem}; fix: {fix}")
