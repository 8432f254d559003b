"""Shared asset storage: the IO manager and AssetStore on a file:// URL and on an fsspec memory:// URL.

Real Dagster materializations through ``LocalFileIOManager`` (a table and a record, daily partitions and an
unpartitioned asset), read back by a downstream asset and by ``AssetStore`` as checks and sensors do. Local
files keep owner-only modes and leave no temporary file; a URL without a file system is refused in one line.
"""

from __future__ import annotations

import stat
import uuid
from pathlib import Path

import pandas as pd
import pytest

from ppml.errors import PPMLError


def _materialize(base: str) -> dict:
    from dagster import AssetIn, StaticPartitionsDefinition, asset, materialize

    from resources import AssetStore, LocalFileIOManager

    days = StaticPartitionsDefinition(["2026-03-01", "2026-03-02"])

    @asset(partitions_def=days)
    def table(context) -> pd.DataFrame:  # type: ignore[no-untyped-def]
        return pd.DataFrame({"day": [context.partition_key] * 3, "value": [1, 2, 3]})

    @asset(partitions_def=days, ins={"table": AssetIn()})
    def summary(table: pd.DataFrame) -> dict:
        return {"rows": len(table), "day": str(table["day"].iloc[0])}

    @asset
    def policy_record() -> dict:
        return {"k": 5}

    io_manager = LocalFileIOManager(base_dir=base)
    for day in days.get_partition_keys():
        result = materialize([table, summary], partition_key=day, resources={"io_manager": io_manager})
        assert result.success
    assert materialize([policy_record], resources={"io_manager": io_manager}).success
    store = AssetStore(base_dir=base)
    return {
        "table": store.read_stored("table", "2026-03-02"),
        "summary": store.read_stored("summary", "2026-03-01"),
        "policy_record": store.read_stored("policy_record"),
    }


def _assert_round_trip(stored: dict) -> None:
    assert stored["table"]["day"].tolist() == ["2026-03-02"] * 3
    assert stored["summary"] == {"rows": 3, "day": "2026-03-01"}
    assert stored["policy_record"] == {"k": 5}


def test_file_url_base_is_local_owner_only_and_atomic(tmp_path: Path) -> None:
    base = tmp_path / "shared" / "assets"
    _assert_round_trip(_materialize(base.as_uri()))
    files = sorted(p for p in base.rglob("*") if p.is_file())
    assert [p.relative_to(base).as_posix() for p in files] == [
        "policy_record/latest.json",
        "summary/2026-03-01.json",
        "summary/2026-03-02.json",
        "table/2026-03-01.parquet",
        "table/2026-03-02.parquet",
    ]  # no temporary file left behind
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in base.rglob("*") if p.is_dir())


def test_fsspec_memory_url_base_round_trips() -> None:
    import fsspec

    root = f"ppml-test-{uuid.uuid4().hex[:8]}"
    stored = _materialize(f"memory://{root}/assets")
    _assert_round_trip(stored)
    memory = fsspec.filesystem("memory")
    names = sorted(memory.find(f"/{root}"))
    assert f"/{root}/assets/table/2026-03-01.parquet" in names
    assert not [name for name in names if name.endswith(".tmp")]
    memory.rm(f"/{root}", recursive=True)


def test_missing_upstream_on_a_url_names_the_asset_and_the_fix() -> None:
    from resources import AssetStore

    with pytest.raises(PPMLError, match=r"field 'table': upstream partition 2026-03-09 is not materialized; fix:"):
        AssetStore(base_dir=f"memory://ppml-test-{uuid.uuid4().hex[:8]}").read_stored("table", "2026-03-09")


def test_unusable_bases_are_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from ppml_assets.definitions import shared_locations_from_env

    monkeypatch.setenv("PPML_ASSET_BASE", "nosuchfs://bucket/assets")
    with pytest.raises(PPMLError) as refused:
        shared_locations_from_env()
    message = str(refused.value)
    assert "PPML_ASSET_BASE" in message and "fix:" in message and "\n" not in message

    monkeypatch.setenv("PPML_ASSET_BASE", "memory://bucket/assets")
    monkeypatch.setenv("PPML_CHECKPOINT_BASE", "memory://bucket/checkpoints")
    with pytest.raises(PPMLError, match=r"field 'PPML_CHECKPOINT_BASE': memory:// is not a file system path; fix:"):
        shared_locations_from_env()

    monkeypatch.setenv("PPML_CHECKPOINT_BASE", "file:///srv/shared/checkpoints")
    assert shared_locations_from_env() == ("memory://bucket/assets", "file:///srv/shared/checkpoints")


def test_checkpoints_follow_a_shared_checkpoint_base(tmp_path: Path) -> None:
    from resources import WorkspacePaths

    shared = tmp_path / "nfs" / "checkpoints"
    assert WorkspacePaths(home=str(tmp_path), checkpoint_base=shared.as_uri()).checkpoints_dir == shared
    assert WorkspacePaths(home=str(tmp_path)).checkpoints_dir == tmp_path / "checkpoints"
