"""Helpers for the federated tests: a small federated policy variant and prepared bundled sites."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.graph_support import write_policy
from tests.support import REPO_ROOT

FEDERATED_POLICY = REPO_ROOT / "policies" / "adult_federated.yaml"
SITES = ["north", "south", "east"]
#: The bundled window's last days: enough records per site for k = 5 and l = 2, few enough to stay cheap.
AS_OF = "2026-04-30"
BUNDLED_DAYS = 8


def federated_policy(directory: Path, **federation: Any) -> Path:
    """The shipped federated policy with absolute file paths and ``training.federation`` changes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = write_policy(directory, base=FEDERATED_POLICY)
    document = yaml.safe_load(path.read_text())
    document["training"]["federation"].update(federation)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def federated_document(**federation: Any) -> dict[str, Any]:
    document = yaml.safe_load(FEDERATED_POLICY.read_text())
    document["training"]["federation"].update(federation)
    return document
