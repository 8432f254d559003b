"""Crash-safe checkpoint files.

A checkpoint is written to a temporary file in the same directory, flushed to disk and renamed over the previous
one, so a ``kill -9`` at any moment leaves either the old or the new checkpoint, never a torn one. Checkpoints hold
model weights and generator states: treat the directory like the model itself (never publish it).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from ppml.errors import PPMLError
from ppml.private_files import private_dir

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "dp_checkpoint.pt"


def checkpoint_path(checkpoint_dir: Path) -> Path:
    return Path(checkpoint_dir) / CHECKPOINT_NAME


def atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """torch.save, atomically (see :func:`atomic_write_bytes`)."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(buffer.getvalue(), path)


def atomic_write_bytes(data: bytes, path: Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path`` (atomic on POSIX)."""
    private_dir(path.parent)  # mkstemp below creates the file 0600
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none.

    ``weights_only=True``: a checkpoint holds tensors, numbers, strings and containers only, so loading one can
    never run code, even if someone else could write to the folder.
    """
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise PPMLError(
            f"{path}: field '(file)': not a plain checkpoint, refused without loading it "
            f"({str(error).splitlines()[0][:160]}); fix: delete the file so that training starts afresh"
        ) from None
