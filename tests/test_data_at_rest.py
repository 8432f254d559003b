"""Personal data at rest: owner-only files whatever the umask; checkpoints never run code when loaded."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from ppml.errors import PPMLError
from ppml.training.checkpoint import atomic_torch_save, load_checkpoint
from resources.io_manager import LocalFileIOManager


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The common default 022 (world-readable files), restored afterwards."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_asset_files_are_owner_only_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    manager = LocalFileIOManager(base_dir=str(tmp_path / "assets"))
    table = manager._write(tmp_path / "assets" / "raw_records" / "2026-03-01", pd.DataFrame({"name": ["Ann"]}))
    document = manager._write(tmp_path / "assets" / "dp_model" / "latest", {"epsilon": 1.0})
    for path in (table, document):
        assert _mode(path) == 0o600, path
        assert _mode(path.parent) == 0o700 and _mode(path.parent.parent) == 0o700
    assert pd.read_parquet(table)["name"].tolist() == ["Ann"]


def test_checkpoints_are_owner_only_and_load_as_weights(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "checkpoints" / "run" / "dp_checkpoint.pt"
    atomic_torch_save({"weights": torch.ones(2), "epoch": 3, "history": [{"loss": 0.5}]}, path)
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    loaded = load_checkpoint(path)
    assert loaded is not None and loaded["epoch"] == 3 and torch.equal(loaded["weights"], torch.ones(2))


class _RunsCode:
    """What an attacker who can write to the checkpoint folder would plant: unpickling it runs a command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_is_refused_without_running_code(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "dp_checkpoint.pt"
    torch.save({"weights": torch.ones(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(PPMLError, match=r"dp_checkpoint.pt: field '\(file\)': not a plain checkpoint.*fix: delete"):
        load_checkpoint(path)
    assert not marker.exists()


def test_the_workspace_tightens_files_left_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ppml.workspace import prepare_workspace

    for name in ("PPML_HOME", "DAGSTER_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored afterwards: prepare_workspace sets them
    monkeypatch.delenv("DAGSTER_HOME")
    home = tmp_path / "home"
    (home / "assets" / "raw_records").mkdir(parents=True)
    leaked = home / "assets" / "raw_records" / "2026-03-01.parquet"
    leaked.write_bytes(b"personal")
    leaked.chmod(0o644)
    (home / "assets").chmod(0o755)
    previous = os.umask(0o022)
    try:
        _, notes = prepare_workspace(home, demo_key="never")
        created = home / "reports" / "new.html"
        created.write_text("report")  # anything the process creates from now on is private too
    finally:
        os.umask(previous)
    assert _mode(leaked) == 0o600 and _mode(home / "assets") == 0o700 and _mode(home) == 0o700
    assert _mode(created) == 0o600 and _mode(home / "dagster") == 0o700
    assert any("now owner-only" in note for note in notes)
