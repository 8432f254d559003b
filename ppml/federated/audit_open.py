"""An audit hook that logs every file a process opens (``PPML_OPEN_AUDIT_DIR``): the proof, in tests, that the
federation's server side never opens a site's file. Installed by the ``sitecustomize`` beside it, which the
server-side processes (SuperLink, SuperExec, ServerApp) get on their ``PYTHONPATH``."""

from __future__ import annotations

import os
import sys

AUDIT_DIR_ENV = "PPML_OPEN_AUDIT_DIR"


def install() -> None:
    folder = os.environ.get(AUDIT_DIR_ENV)
    if not folder:
        return
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    fd = os.open(os.path.join(folder, f"{name}.{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            os.write(fd, os.fsencode(os.fspath(args[0])) + b"\n")

    sys.addaudithook(hook)
