"""Ed25519 signing of the evidence pack, with the key from the environment.

Ed25519 (RFC 8032) through ``cryptography`` (already a dependency for HKDF): deterministic signatures, 32-byte
keys that fit in one environment variable, and verification that needs only the public key, which the
controller publishes to its auditors. ``PPML_SIGNING_KEY`` holds either a PEM (PKCS#8) private key or the
base64 of the 32-byte seed; the demo generates one in ``.ppml/secrets/`` as it does the pseudonymization key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ppml.errors import input_error

SIGNING_KEY_ENV = "PPML_SIGNING_KEY"
_FIX = (
    f"export {SIGNING_KEY_ENV} with a PEM Ed25519 private key or the base64 of 32 random bytes "
    "(e.g. `python -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())'`)"
)


def new_key_text() -> str:
    """A fresh key in the form PPML_SIGNING_KEY accepts (base64 of the 32-byte seed)."""
    seed = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed).decode()


def parse_private_key(text: str, source: str = "environment", field: str = SIGNING_KEY_ENV) -> Ed25519PrivateKey:
    """The private key written as PEM or as base64 of the seed; anything else is a one-line error."""
    text = text.strip()
    if not text:
        raise input_error(source, field, "missing", _FIX)
    if text.startswith("-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(text.encode(), password=None)
        except (ValueError, TypeError) as error:
            raise input_error(source, field, f"not a readable PEM private key ({error})", _FIX) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise input_error(source, field, f"a {type(key).__name__}, not an Ed25519 key", _FIX)
        return key
    try:
        seed = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise input_error(source, field, "neither PEM nor base64", _FIX) from None
    if len(seed) != 32:
        raise input_error(source, field, f"decodes to {len(seed)} bytes, an Ed25519 seed has 32", _FIX)
    return Ed25519PrivateKey.from_private_bytes(seed)


def signing_key_from_env(environ: Mapping[str, str] | None = None) -> Ed25519PrivateKey:
    """The evidence-signing key from PPML_SIGNING_KEY; missing or malformed keys are refused, never replaced."""
    return parse_private_key((environ if environ is not None else os.environ).get(SIGNING_KEY_ENV, ""))


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, in hex: what an auditor compares with the controller's published key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(text: str, source: str) -> Ed25519PublicKey:
    """A PEM Ed25519 public key (the controller's published key, or the one stored in the pack)."""
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise input_error(
            source, "(public key)", "not a PEM public key", "pass the controller's PEM public key"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise input_error(source, "(public key)", "not an Ed25519 key", "pass the controller's Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode()


def signature_valid(key: Ed25519PublicKey, data: bytes, signature_b64: str) -> bool:
    try:
        key.verify(base64.b64decode(signature_b64.strip(), validate=True), data)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def ensure_demo_key(secrets_dir: Path) -> tuple[str, Path]:
    """The demo's signing key, generated once into ``secrets_dir/demo_signing_key`` (0600); returns it and the
    file. Only the demo calls this, and only when PPML_SIGNING_KEY is not exported."""
    key_file = secrets_dir / "demo_signing_key"
    if not key_file.exists():
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(new_key_text())
    return key_file.read_text().strip(), key_file
