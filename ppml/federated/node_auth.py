"""SuperNode authentication files: every site's OpenSSH EC key pair, checked before the run is charged.

Flower 1.42's SuperLink (``--enable-supernode-auth``) accepts only SuperNodes whose public key was registered
through its Control API (``flwr supernode register <public key>``), and each SuperNode signs its Fleet requests
with ``--auth-supernode-private-key``. A key Flower cannot parse would only surface as a SuperNode that exits
after the ledger was charged, so ppml reads every key here first and refuses the run in one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ppml.errors import PPMLError
from ppml.federated.settings import FederationSettings

NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True)
class NodeKeyFiles:
    """One site's resolved key files (the contents are never kept or logged)."""

    private_key: Path
    public_key: Path


def _readable(path: Path, field: str, source: str) -> bytes:
    if not path.is_file() or not os.access(path, os.R_OK):
        raise PPMLError(
            f"{source}: field '{field}': {path} is not a readable file; "
            "fix: point it at the OpenSSH key file (relative paths lie beside the policy)"
        )
    return path.read_bytes()


def _public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _load_pair(files: NodeKeyFiles, field: str, source: str) -> None:
    """Parse both keys as Flower does and refuse a pair that is not EC on a NIST curve, or does not match."""
    private_raw = _readable(files.private_key, f"{field}.private_key", source)
    if files.private_key.stat().st_mode & 0o077:
        raise PPMLError(
            f"{source}: field '{field}.private_key': {files.private_key} is readable by others; "
            f"fix: chmod 600 {files.private_key}"
        )
    public_raw = _readable(files.public_key, f"{field}.public_key", source)
    try:
        private = serialization.load_ssh_private_key(private_raw, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        private = None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, NIST_CURVES):
        raise PPMLError(
            f"{source}: field '{field}.private_key': not an unencrypted OpenSSH EC private key on a NIST curve; "
            "fix: ssh-keygen -t ecdsa -b 384 -N '' -f <site>_key"
        )
    try:
        public = serialization.load_ssh_public_key(public_raw)
    except (ValueError, UnsupportedAlgorithm):
        public = None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PPMLError(
            f"{source}: field '{field}.public_key': not an OpenSSH EC public key; fix: use the <site>_key.pub file"
        )
    if _public_bytes(public) != _public_bytes(private.public_key()):
        raise PPMLError(
            f"{source}: field '{field}.public_key': it is not the public half of private_key; "
            "fix: use the .pub file written with that private key"
        )


def node_key_files(
    fed: FederationSettings, resolve: Callable[[Path], Path], source: str
) -> dict[str, NodeKeyFiles] | None:
    """Every site's key pair as paths, each file refused in one line when missing, unreadable or not a key."""
    if fed.node_authentication is None:
        return None
    keys = {}
    for site, pair in fed.node_authentication.sites.items():
        files = NodeKeyFiles(resolve(Path(pair.private_key)), resolve(Path(pair.public_key)))
        _load_pair(files, f"training.federation.node_authentication.sites.{site}", source)
        keys[site] = files
    return keys
