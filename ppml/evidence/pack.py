"""The hash DAG of one model version: every materialization in its lineage, chained to its inputs' hashes.

Each node is one stored artifact (an asset partition's Parquet/JSON file, a model file, the policy and the
files it names, the report and documents) with the SHA-256 of its bytes. Its node hash covers its content hash
and its inputs' node hashes, so a change anywhere upstream changes every hash below it, as in a Merkle tree;
the root hash stands for the whole lineage. The manifest (``evidence_pack.json``) is signed with Ed25519
(``evidence_pack.sig``). Locations are stored relative to the pack's folder, so the workspace can be moved or
archived as a whole and still verify. Raw copies are disposed after de-identification (``ppml.raw_copies``):
their collection-time hash is recorded (kind ``recorded``) and covered by the signature, but cannot be
recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppml.errors import PPMLError
from ppml.evidence import signing

PACK_FORMAT = "ppml-evidence-pack/1"
MANIFEST = "evidence_pack.json"
SIGNATURE = "evidence_pack.sig"
PUBLIC_KEY = "signing_key.pub"
ROOT_ID = "model_version"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class NodeSpec:
    """One artifact of the lineage as the caller found it: a stored file, or a recorded hash of a disposed one."""

    id: str
    inputs: tuple[str, ...] = ()
    path: str | None = None  # a local path or an fsspec URL
    recorded_sha256: str | None = None
    note: str = ""


@dataclass
class PackFiles:
    directory: Path
    manifest: Path
    signature: Path
    public_key: Path
    root_sha256: str
    nodes: int = 0
    recorded: list[str] = field(default_factory=list)


def file_sha256(location: str | Path) -> str:
    """SHA-256 of a stored file's bytes, read in chunks (local path or fsspec URL)."""
    digest = hashlib.sha256()
    if "://" in str(location):
        from ppml.locations import resolve_location

        handle = resolve_location(str(location)).open("rb")
    else:
        handle = open(location, "rb")  # noqa: SIM115 - closed below, same as the fsspec handle
    with handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def node_sha256(node_id: str, content_sha256: str | None, input_hashes: Iterable[str]) -> str:
    """The chained hash: the node's name, its content hash and its inputs' node hashes (in stored order)."""
    document = {"id": node_id, "sha256": content_sha256, "inputs": list(input_hashes)}
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def relative_location(path: str, directory: Path) -> str:
    if "://" in path:
        return path
    return os.path.relpath(Path(path).resolve(), directory.resolve())


def resolve_stored(location: str, directory: Path) -> str:
    return location if "://" in location else str((directory / location).resolve())


def topological(nodes: dict[str, dict[str, Any]]) -> list[str]:
    """Node ids with every input before its consumers; an unknown input or a cycle is an error."""
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node_id: str, trail: tuple[str, ...]) -> None:
        if state.get(node_id) == 2:
            return
        if state.get(node_id) == 1:
            raise PPMLError(f"evidence pack: field 'nodes': cycle through {' -> '.join(trail)}; fix: this is a bug")
        state[node_id] = 1
        for parent in nodes[node_id]["inputs"]:
            if parent not in nodes:
                raise PPMLError(
                    f"evidence pack: field 'nodes.{node_id}.inputs': unknown input '{parent}'; fix: this is a bug"
                )
            visit(parent, (*trail, parent))
        state[node_id] = 2
        order.append(node_id)

    for node_id in sorted(nodes):
        visit(node_id, (node_id,))
    return order


def chain(nodes: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Every node's chained hash, computed from the stored content hashes and inputs."""
    hashes: dict[str, str] = {}
    for node_id in topological(nodes):
        node = nodes[node_id]
        hashes[node_id] = node_sha256(node_id, node["sha256"], (hashes[p] for p in node["inputs"]))
    return hashes


def _node_record(spec: NodeSpec, directory: Path) -> dict[str, Any]:
    if spec.path is not None:
        return {
            "kind": "file",
            "location": relative_location(spec.path, directory),
            "sha256": file_sha256(spec.path),
            "inputs": list(spec.inputs),
            "note": spec.note,
        }
    return {
        "kind": "recorded" if spec.recorded_sha256 else "absent",
        "location": None,
        "sha256": spec.recorded_sha256,
        "inputs": list(spec.inputs),
        "note": spec.note,
    }


def build_manifest(specs: Iterable[NodeSpec], model: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The manifest: every node with its content and chained hash, and a root over the lineage's sinks."""
    nodes = {spec.id: _node_record(spec, directory) for spec in specs}
    consumed = {parent for node in nodes.values() for parent in node["inputs"]}
    model_sha = hashlib.sha256(json.dumps(model, sort_keys=True, default=str).encode()).hexdigest()
    nodes[ROOT_ID] = {
        "kind": "model",
        "location": None,
        "sha256": model_sha,
        "inputs": sorted(set(nodes) - consumed),
        "note": "the model version; its inputs are every artifact no other artifact consumed",
    }
    hashes = chain(nodes)
    for node_id, node in nodes.items():
        node["node_sha256"] = hashes[node_id]
    return {"format": PACK_FORMAT, "model": model, "root_sha256": hashes[ROOT_ID], "nodes": nodes}


def write_pack(
    specs: Iterable[NodeSpec], model: dict[str, Any], directory: Path, key: signing.Ed25519PrivateKey
) -> PackFiles:
    """Hash, sign and write the pack into ``directory`` (beside the report); returns where it went."""
    manifest = build_manifest(specs, model, directory)
    manifest["signing_key"] = {"algorithm": "Ed25519", "fingerprint_sha256": signing.fingerprint(key)}
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    files = PackFiles(
        directory=directory,
        manifest=directory / MANIFEST,
        signature=directory / SIGNATURE,
        public_key=directory / PUBLIC_KEY,
        root_sha256=manifest["root_sha256"],
        nodes=len(manifest["nodes"]),
        recorded=sorted(n for n, node in manifest["nodes"].items() if node["kind"] == "recorded"),
    )
    for path, content in (
        (files.manifest, data),
        (files.signature, (signing.sign(key, data) + "\n").encode()),
        (files.public_key, signing.public_key_pem(key).encode()),
    ):
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_bytes(content)
        os.replace(temporary, path)
    return files
