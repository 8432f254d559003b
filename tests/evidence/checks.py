"""Assertions on a real run's evidence pack, shared by the lifecycle tests that already ran the pipeline."""

from __future__ import annotations

from pathlib import Path

from ppml.evidence.verify import verify_pack


def assert_pack_verifies_then_names_a_changed_byte(report_dir: Path, artifact: Path, node_id: str) -> None:
    """The fresh pack verifies; after one byte of ``artifact`` changes, verify fails naming ``node_id``."""
    result = verify_pack(report_dir)
    assert result.ok, result.problems
    assert result.files_checked > 20
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    problems = verify_pack(report_dir).problems
    assert [p for p in problems if p.startswith(f"{node_id}: artifact changed")], problems
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
