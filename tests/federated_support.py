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


def node_key_pairs(folder: Path, sites: list[str]) -> dict[str, dict[str, str]]:
    """A P-384 key pair per site in OpenSSH format (as ``ssh-keygen -t ecdsa -b 384`` writes), private keys 0600."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    pairs = {}
    for site in sites:
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = folder / f"{site}_key", folder / f"{site}_key.pub"
        private.touch(mode=0o600)
        private.chmod(0o600)
        private.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
        pairs[site] = {"private_key": str(private), "public_key": str(public)}
    return pairs
