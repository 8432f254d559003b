"""Each site's own record of the rounds it trained: what its ledger run is settled with afterwards."""

from __future__ import annotations

import json
import os
from pathlib import Path

PROGRESS_FILE = "progress.json"


def record_round(site_dir: Path, server_round: int, steps: int) -> None:
    path = Path(site_dir) / PROGRESS_FILE
    rounds = read_rounds(site_dir)
    rounds[str(server_round)] = int(steps)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(rounds, sort_keys=True), encoding="utf-8")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def read_rounds(site_dir: Path) -> dict[str, int]:
    path = Path(site_dir) / PROGRESS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def reset(site_dir: Path) -> None:
    (Path(site_dir) / PROGRESS_FILE).unlink(missing_ok=True)
