"""Raw copies at rest: deleted (or encrypted) once de-identification passed its check, purged after retention.

`raw_records` keeps every raw direct identifier. Nothing downstream needs it once the partition's
de-identification has passed its blocking check (`no_raw_direct_identifiers`), so that check disposes of it:

* ``collection.raw_copy: delete`` (the default): the Parquet file is deleted;
* ``collection.raw_copy: encrypt``: it is replaced by a Fernet token (AES-128-CBC + HMAC-SHA256) under a key
  derived with HKDF from ``PPML_HMAC_KEY`` (the key comes from the environment, never from a file).

One thing is kept for the compliance stage's identifier-leakage scan and the report's forbidden-value check:
the values of the identifier columns that are dropped, pseudonymized or masked, encrypted the same way
(``identifier_reference/<day>.fernet``) -- never the records. Both encrypted kinds are purged once older than
the policy's ``use_case.retention_days`` (counted from when they were written). Every deletion, encryption and
purge is an audit record (``$PPML_HOME/audit/raw_copies.jsonl``, owner-only: partition, action, file name,
size and SHA-256 of what was disposed of, never a value) and is returned for the asset metadata.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from ppml.errors import input_error
from ppml.locations import is_local, resolve_location
from ppml.private_files import PRIVATE_FILE_MODE, private_dir

RAW_ASSET = "raw_records"
REFERENCE_FOLDER = "identifier_reference"
AUDIT_FILE = Path("audit") / "raw_copies.jsonl"
_KEY_INFO = b"ppml raw-copy encryption v1"
_KEY_SALT = b"ppml/raw-copies"


def fernet_for(master_key: bytes) -> Any:
    """The Fernet cipher for raw copies, its key derived from the pseudonymization master key (HKDF-SHA256)."""
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=_KEY_SALT, info=_KEY_INFO).derive(master_key)
    return Fernet(base64.urlsafe_b64encode(derived))


@dataclass
class Disposal:
    """What one disposal did, per partition (no values, only names, counts and digests)."""

    action: str
    partitions: list[str] = field(default_factory=list)
    files: int = 0
    purged: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {
            "raw_copy": self.action,
            "raw_copy_partitions": len(self.partitions),
            "raw_copy_files": self.files,
            "raw_copies_purged": self.purged,
        }


class RawCopies:
    """The raw copies and identifier references under an asset base folder, and their audit trail."""

    def __init__(self, base_dir: Any, home: Path, master_key: bytes) -> None:
        """``base_dir``: the policy graph's asset folder, a local path or an fsspec location (`ppml.locations`)."""
        self.base_dir = base_dir if not isinstance(base_dir, str) else resolve_location(base_dir)
        self.audit_path = Path(home) / AUDIT_FILE
        self._fernet = fernet_for(master_key)

    def raw_file(self, day: str) -> Any:
        return self.base_dir / RAW_ASSET / f"{day}.parquet"

    def reference_file(self, day: str) -> Any:
        return self.base_dir / REFERENCE_FOLDER / f"{day}.fernet"

    # ------------------------------------------------------------------------------------------ disposal

    def dispose(
        self, raw: pd.DataFrame, days: Iterable[str], event_date: str, columns: list[str], mode: str
    ) -> Disposal:
        """After the check passed: keep the identifier reference (encrypted), then delete or encrypt each raw copy."""
        action = "deleted" if mode == "delete" else "encrypted"
        done = Disposal(action)
        day_of = raw[event_date].astype(str) if event_date in raw.columns else None
        for day in days:
            rows = raw[day_of == day] if day_of is not None else raw
            kept = [c for c in columns if c in rows.columns]
            self._write_encrypted(self.reference_file(day), _parquet_bytes(rows[kept].drop_duplicates()))
            path = self.raw_file(day)
            if not path.is_file():
                continue
            data = path.read_bytes()
            if mode == "encrypt":
                self._write_encrypted(path.with_suffix(".parquet.fernet"), data)
            path.unlink()
            done.partitions.append(day)
            done.files += 1
            done.records.append(self._audit(day, action, path.name, data))
        return done

    def purge_expired(self, retention_days: int, now: float | None = None) -> list[dict[str, Any]]:
        """Delete encrypted raw copies and identifier references older than ``retention_days``; audit each."""
        now = time.time() if now is None else now
        limit = retention_days * 86400
        purged = []
        for folder, pattern in ((RAW_ASSET, "*.parquet*"), (REFERENCE_FOLDER, "*.fernet")):
            for path in sorted((self.base_dir / folder).glob(pattern)):
                try:
                    written = float(path.stat().st_mtime)
                except (AttributeError, OSError, TypeError):  # a store without modification times
                    continue
                if path.name.startswith(".") or now - written <= limit:
                    continue
                data = path.read_bytes()
                path.unlink()
                purged.append(self._audit(path.name.split(".")[0], "purged", f"{folder}/{path.name}", data))
        return purged

    # ------------------------------------------------------------------------------------------ reading

    def read_identifier_reference(self, day: str) -> pd.DataFrame | None:
        """The identifier values of one day, or None when the day has no reference (collected before)."""
        path = self.reference_file(day)
        return pd.read_parquet(io.BytesIO(self._decrypt(path))) if path.is_file() else None

    def read_encrypted_raw_copy(self, day: str) -> pd.DataFrame:
        """An encrypted raw copy (``raw_copy: encrypt``), for an operator who must look at the source records."""
        return pd.read_parquet(io.BytesIO(self._decrypt(self.raw_file(day).with_suffix(".parquet.fernet"))))

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit_path.is_file():
            return []
        return [json.loads(line) for line in self.audit_path.read_text(encoding="utf-8").splitlines() if line]

    # ------------------------------------------------------------------------------------------ helpers

    def _decrypt(self, path: Any) -> bytes:
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(path.read_bytes())
        except InvalidToken:
            raise input_error(
                str(path),
                "PPML_HMAC_KEY",
                "the file does not decrypt under the key derived from PPML_HMAC_KEY",
                "set the PPML_HMAC_KEY it was written with, or re-collect the partition",
            ) from None

    def _write_encrypted(self, path: Any, data: bytes) -> None:
        if not is_local(path):  # a shared store: no modes to set, written whole
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self._fernet.encrypt(data))
            return
        private_dir(path.parent)
        temporary = path.with_name(f".{path.name}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(self._fernet.encrypt(data))
        os.replace(temporary, path)

    def _audit(self, partition: str, action: str, name: str, data: bytes) -> dict[str, Any]:
        record = {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "partition": partition,
            "action": action,
            "file": name,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        private_dir(self.audit_path.parent)
        descriptor = os.open(self.audit_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        return record


def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()
