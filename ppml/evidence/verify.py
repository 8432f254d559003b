"""``ppml verify DIR``: recompute every hash of an evidence pack from the stored artifacts and check its signature.

The signature covers the manifest byte for byte, so any edit of it (a hash, a location, the model) fails; the
content hashes are recomputed from the artifacts themselves, so any changed byte of an artifact names that
artifact; the chained hashes are recomputed from the content hashes, so the root the auditor signs off stands
for all of them. The public key comes from ``--public-key`` (the controller's published key); without it the
key stored in the pack is used and the result says so, because a forger could re-sign with a key of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppml.errors import input_error
from ppml.evidence import signing
from ppml.evidence.pack import MANIFEST, PACK_FORMAT, PUBLIC_KEY, ROOT_ID, SIGNATURE, chain, file_sha256, resolve_stored


@dataclass
class Verification:
    """What ``verify_pack`` found: problems name the artifact (node id and location)."""

    directory: Path
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files_checked: int = 0
    root_sha256: str = ""
    fingerprint: str = ""
    key_source: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_manifest(directory: Path) -> tuple[bytes, str]:
    manifest, signature = directory / MANIFEST, directory / SIGNATURE
    for path in (manifest, signature):
        if not path.is_file():
            raise input_error(
                str(path), "(file)", "missing", "pass the folder that holds evidence_pack.json (the report's folder)"
            )
    return manifest.read_bytes(), signature.read_text()


def _public_key(directory: Path, trusted: Path | None) -> tuple[signing.Ed25519PublicKey, str]:
    if trusted is not None:
        if not trusted.is_file():
            raise input_error(str(trusted), "--public-key", "no such file", "pass the controller's PEM public key")
        return signing.load_public_key(trusted.read_text(), str(trusted)), f"trusted key {trusted}"
    stored = directory / PUBLIC_KEY
    if not stored.is_file():
        raise input_error(str(stored), "(file)", "missing", "pass --public-key with the controller's public key")
    return signing.load_public_key(stored.read_text(), str(stored)), f"key stored in the pack ({PUBLIC_KEY})"


def _check_contents(manifest: dict[str, Any], directory: Path, result: Verification) -> None:
    for node_id, node in sorted(manifest["nodes"].items()):
        if node["kind"] == "recorded":
            continue
        if node["kind"] != "file":
            continue
        location = resolve_stored(node["location"], directory)
        try:
            found = file_sha256(location)
        except (OSError, ValueError):
            result.problems.append(f"{node_id}: artifact missing at {node['location']}")
            continue
        result.files_checked += 1
        if found != node["sha256"]:
            result.problems.append(
                f"{node_id}: artifact changed at {node['location']} "
                f"(sha256 {found[:16]}..., signed {str(node['sha256'])[:16]}...)"
            )


def _check_chain(manifest: dict[str, Any], result: Verification) -> None:
    try:
        recomputed = chain(manifest["nodes"])
    except ValueError as error:
        result.problems.append(f"{MANIFEST}: {error}")
        return
    for node_id, node in sorted(manifest["nodes"].items()):
        if recomputed[node_id] != node.get("node_sha256"):
            result.problems.append(f"{node_id}: chained hash in {MANIFEST} does not match its content and inputs")
    if recomputed.get(ROOT_ID) != manifest.get("root_sha256"):
        result.problems.append(f"{MANIFEST}: root hash does not match the lineage")


def verify_pack(directory: Path, trusted_key: Path | None = None) -> Verification:
    """Check the signature, every artifact's content hash and the chain; collect every problem, not the first."""
    directory = Path(directory)
    data, signature = _read_manifest(directory)
    key, key_source = _public_key(directory, trusted_key)
    result = Verification(directory, fingerprint=signing.fingerprint(key), key_source=key_source)
    if not signing.signature_valid(key, data, signature):
        result.problems.append(f"{MANIFEST}: signature does not match ({SIGNATURE}, {key_source})")
    try:
        manifest = json.loads(data)
    except ValueError:
        result.problems.append(f"{MANIFEST}: not valid JSON")
        return result
    if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT or "nodes" not in manifest:
        result.problems.append(f"{MANIFEST}: not an evidence pack of format {PACK_FORMAT}")
        return result
    result.root_sha256 = str(manifest.get("root_sha256", ""))
    _check_contents(manifest, directory, result)
    _check_chain(manifest, result)
    recorded = [n for n, node in manifest["nodes"].items() if node["kind"] == "recorded"]
    if recorded:
        result.notes.append(
            f"{len(recorded)} recorded hashes (raw copies disposed after de-identification, or files held in a "
            "remote store; each node's note says which) are covered by the signature but cannot be recomputed"
        )
    if trusted_key is None:
        result.notes.append(
            f"signature checked against the key stored in the pack (fingerprint {result.fingerprint}); "
            "pass --public-key with the controller's published key to rule out a re-signed pack"
        )
    return result
