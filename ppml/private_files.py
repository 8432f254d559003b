"""Owner-only files for personal data at rest: 0600 files in 0700 folders, whatever the caller's umask.

Raw and de-identified records, the ledger and MLflow databases, checkpoints and reports all describe people;
on a shared machine a default umask of 022 would leave them world-readable. Processes that handle them set a
private umask once (so that files other libraries create — SQLite, Parquet, MLflow artifacts — are private
too), and ppml's own writers set the mode explicitly as well.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def use_private_umask() -> None:
    """Make everything this process (and its children) creates from now on owner-only."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 folders; an existing folder is tightened to 0700."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    for folder in [*missing, path]:
        os.chmod(folder, PRIVATE_DIR_MODE)
    return path


def tighten_tree(root: Path) -> int:
    """Make every folder under ``root`` 0700 and every file 0600 (symlinks untouched); return files changed."""
    changed = 0
    root = Path(root)
    if not root.is_dir():
        return 0
    os.chmod(root, PRIVATE_DIR_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            target = os.path.join(folder, name)
            if not os.path.islink(target):
                os.chmod(target, PRIVATE_DIR_MODE)
        for name in files:
            target = os.path.join(folder, name)
            mode = os.lstat(target).st_mode
            if stat.S_ISREG(mode) and stat.S_IMODE(mode) & 0o077:
                os.chmod(target, stat.S_IMODE(mode) & 0o700 | PRIVATE_FILE_MODE)
                changed += 1
    return changed
