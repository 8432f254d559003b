"""Where asset files and checkpoints live: a local or shared path, or an fsspec URL (universal_pathlib).

Workers on several hosts (celery, Kubernetes) must see the same asset files, so the base location may be a
shared mount or any fsspec URL (``s3://``, ``gs://``, ``abfs://`` with their fsspec package installed;
``memory://`` in tests). ``file://`` and ``local://`` URLs are plain local paths, so local files keep what
ppml promises for them: atomic replacement (temporary file, then ``os.replace``) and owner-only modes (0600 in
0700 folders). On a remote file system a file is written under a temporary name and then moved into place, so a
reader never finds a partial file under the final name; its access control is the store's (bucket policy).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from ppml.errors import input_error
from ppml.private_files import PRIVATE_FILE_MODE, private_dir

LOCAL_PROTOCOLS = ("", "file", "local")


def resolve_location(base: str, field: str = "PPML_ASSET_BASE") -> Any:
    """A local ``Path`` for a path or a file:// URL, else a ``UPath``; an unusable URL is refused in one line."""
    if "://" not in base:
        return Path(base)
    from upath import UPath

    try:
        location = UPath(base)
    except (ValueError, ImportError) as exc:
        raise input_error(
            "environment",
            field,
            f"no file system for {base.split('://', 1)[0]}:// ({type(exc).__name__})",
            "install its fsspec implementation (e.g. s3fs for s3://) or give a shared path",
        ) from None
    if location.protocol in LOCAL_PROTOCOLS:
        return Path(location.path)
    return location


def is_local(location: Any) -> bool:
    return isinstance(location, Path) and not hasattr(location, "protocol")


def write_atomically(path: Any, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file so that its final name only ever holds a complete file (owner-only when local)."""
    temporary = path.with_name(f".{path.name}.tmp")
    if is_local(path):
        private_dir(path.parent)
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        os.chmod(temporary, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
        os.replace(temporary, path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with temporary.open("wb") as handle:
        write(handle)
    temporary.rename(path)


def local_directory(base: str, field: str) -> Path:
    """A base that must be a file system path (checkpoints: resumed with atomic renames and ``torch.load``)."""
    location = resolve_location(base, field)
    if not is_local(location):
        raise input_error(
            "environment",
            field,
            f"{location.protocol}:// is not a file system path",
            "mount the shared storage (NFS, a CSI volume) and give its path",
        )
    return location
