"""Erasure that propagates: from a subject id, through its pseudonym, to partitions, runs and model versions.

An erasure (GDPR Art. 17) or objection (Art. 21) request must reach everything trained on the person, not only
future collection. Raw ids may not travel past de-identification (and raw copies are deleted after it), so the
de-identification step leaves one *membership token* per record beside each daily partition:

    token = first 8 bytes of HMAC-SHA256(K_index, pseudonym(subject_id))

``pseudonym`` is the per-purpose pseudonym of the subject-id column (:mod:`ppml.deidentification`) and
``K_index`` a key derived from that purpose's key with HKDF under its own label, so tokens link neither to the
de-identified records' pseudonyms nor across purposes, and nobody without ``PPML_HMAC_KEY`` can compute one.
The token files are owner-only and never part of a release, a feature set, a log, MLflow or a report.

- ``days/<day>.npz``: the tokens of a de-identified partition, row-aligned with it, and its rows' split buckets
  (a check that a window is matched to its tokens in the right order); written at de-identification.
- ``as_of/<day>.npz``: what one training window kept after the erasure list was applied (anonymization) and the
  tokens of the erased subjects it excluded.
- ``runs/<model>-v<version>.{npz,json}``: that snapshot bound to the registered version trained on it, with its
  lineage (Dagster and MLflow run ids, window, epsilon, delta).

A 64-bit token collides with another subject's with probability about n / 2**64 per lookup: a collision can only
flag a version that did not include the person (an over-count), never miss one that did.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ppml.collection import read_erasure_list
from ppml.deidentification import SPLIT_BUCKET_COLUMN, pseudonymize, purpose_key
from ppml.errors import PPMLError
from ppml.policy import LoadedPolicy, Policy
from ppml.private_files import PRIVATE_FILE_MODE, private_dir

INDEX_FOLDER = "_erasure_index"
INDEX_KEY_SALT = b"ppml/erasure-index/v1"
RETIRE, KEEP = "retire", "keep"
TAG_ERASURE = "ppml.erasure"
TAG_ERASURE_SUBJECTS = "ppml.erasure_subjects"
TAG_ERASURE_ACTION = "ppml.erasure_action"
TAG_EPSILON_BOUND = "ppml.erasure_epsilon_bound"
TAG_DELTA_BOUND = "ppml.erasure_delta_bound"
TAG_RETIRED = "ppml.retired"
TAG_PROPAGATED_AT = "ppml.erasure_propagated_at"


# ------------------------------------------------------------------------------------------------ tokens


def index_key(master_key: bytes, policy: Policy) -> bytes:
    """The token key: derived from the purpose's pseudonym key under a label of its own (domain separation)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=INDEX_KEY_SALT, info=b"erasure-index")
    return derived.derive(purpose_key(master_key, policy))


def subject_tokens(subject_ids: Iterable[str], master_key: bytes, policy: Policy) -> np.ndarray:
    """One uint64 token per subject id (in order), through the subject column's per-purpose pseudonym."""
    ids = pd.Series([str(value).strip() for value in subject_ids], dtype=object)
    if ids.empty:
        return np.zeros(0, dtype=np.uint64)
    column = policy.schema_.subject_id
    pseudonyms = pseudonymize(ids, purpose_key(master_key, policy), column)
    key = index_key(master_key, policy)
    digests = [hmac.new(key, p.encode(), hashlib.sha256).digest()[:8] for p in pseudonyms]
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)


def index_root(asset_store_dir: str | Path, policy: Policy) -> Path:
    """The token folder of one pseudonym scope (data-set identity and purpose) inside the asset store."""
    purpose = " ".join(policy.use_case.purpose.split())
    scope = hashlib.sha256(f"{policy.dataset.id}\x1f{purpose}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", policy.dataset.id).strip("-.") or "dataset"
    return Path(asset_store_dir) / INDEX_FOLDER / f"{slug}-{scope}"


def _key_check(master_key: bytes, policy: Policy) -> str:
    """A public fingerprint of the token key, so that a status asked with another key is refused, not 'unknown'."""
    return hmac.new(index_key(master_key, policy), b"key-check", hashlib.sha256).hexdigest()[:16]


def check_key(root: Path, master_key: bytes, policy: Policy) -> None:
    """Refuse a key other than the one the index was written with (every id would look unknown)."""
    path = root / "key_check"
    if path.is_file() and path.read_text().strip() != _key_check(master_key, policy):
        raise PPMLError(
            f"{root}: field 'PPML_HMAC_KEY': not the key this workspace's pseudonyms were made with; "
            "fix: export the workspace's key (the demo's is in PPML_HOME/secrets/demo_hmac_key)"
        )


def _write_private(path: Path, write: Any) -> None:
    """Atomic, owner-only (the tokens are pseudonymous personal data)."""
    private_dir(path.parent)
    temporary = path.with_name(f".{path.name}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE_MODE))
    with open(temporary, "wb") as handle:
        write(handle)
    os.replace(temporary, path)


# ------------------------------------------------------------------------------------------------ days


def record_day_tokens(
    root: Path, raw_records: pd.DataFrame, deidentified: pd.DataFrame, days: list[str], policy: Policy, key: bytes
) -> dict[str, int]:
    """Write each de-identified day's row-aligned tokens, with its rows' split buckets as an alignment check.

    ``raw_records`` and ``deidentified`` hold the same rows in the same order (de-identification keeps it)."""
    roles = policy.schema_
    if not (root / "key_check").is_file():
        _write_private(root / "key_check", lambda handle: handle.write(_key_check(key, policy).encode()))
    tokens = subject_tokens(raw_records[roles.subject_id], key, policy)
    buckets = deidentified[SPLIT_BUCKET_COLUMN].to_numpy(dtype=np.int16)
    dates = raw_records[roles.event_date].astype(str).to_numpy() if len(days) > 1 else None
    written = {}
    for day in days:
        rows = slice(None) if dates is None else dates == day
        _write_private(
            root / "days" / f"{day}.npz",
            lambda handle, r=rows: np.savez(handle, tokens=tokens[r], split_buckets=buckets[r]),
        )
        written[day] = len(tokens[rows])
    return written


def day_tokens(root: Path, day: str) -> tuple[np.ndarray, np.ndarray] | None:
    """A day's (tokens, split buckets), or None when the day was de-identified without an index."""
    path = root / "days" / f"{day}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return data["tokens"], data["split_buckets"]


def window_tokens(root: Path, window: pd.DataFrame, days: list[str], source: str) -> tuple[np.ndarray, np.ndarray]:
    """The token and day number of every row of a de-identified window read as ``days`` in this order.

    The split buckets stored beside the tokens must equal the window's: a window read in another order, or a day
    de-identified again without its index, is refused rather than matched to the wrong people."""
    parts = []
    for day in days:
        stored = day_tokens(root, day)
        if stored is None:
            raise PPMLError(
                f"{source}: field 'deidentified_records[{day}]': the partition has no erasure index; fix: re-run "
                f"collection_job for {day} so de-identification writes it again"
            )
        parts.append(stored)
    tokens = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.uint64)
    buckets = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int16)
    aligned = len(tokens) == len(window) and (
        SPLIT_BUCKET_COLUMN not in window or np.array_equal(window[SPLIT_BUCKET_COLUMN].to_numpy(), buckets)
    )
    if not aligned:
        raise PPMLError(
            f"{source}: field 'deidentified_records': the window's {len(window)} records do not match their erasure "
            f"index ({len(tokens)} tokens); fix: re-run collection_job for the window's days ({days[0]}..{days[-1]})"
        )
    day_numbers = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p[0]) for p in parts])
    return tokens, day_numbers


# ------------------------------------------------------------------------------------------------ windows


@dataclass
class WindowExclusion:
    """A training window with the erasure list applied, and the snapshot a run will be bound to."""

    records: pd.DataFrame
    tokens: np.ndarray
    day_numbers: np.ndarray
    day_names: list[str]
    erased: np.ndarray
    rows_excluded: int
    subjects_excluded: int

    def save(self, root: Path, as_of: str) -> None:
        """Called once the window's release succeeded, so a refused attempt never replaces a good snapshot."""
        _write_private(
            root / "as_of" / f"{as_of}.npz",
            lambda handle: np.savez(
                handle,
                tokens=self.tokens,
                day_numbers=self.day_numbers,
                day_names=np.array(self.day_names),
                erased=self.erased,
            ),
        )

    def metadata(self) -> dict[str, int]:
        return {"rows_excluded_by_erasure_request": self.rows_excluded, "subjects_excluded": self.subjects_excluded}


def erased_tokens(loaded: LoadedPolicy, master_key: bytes) -> np.ndarray:
    """Sorted tokens of every subject on the policy's erasure/objection list."""
    listed = loaded.policy.collection.erasure_list
    ids = sorted(read_erasure_list(loaded.resolve(listed))) if listed else []
    return np.unique(subject_tokens(ids, master_key, loaded.policy))


def exclude_erased(
    window: pd.DataFrame, days: list[str], loaded: LoadedPolicy, master_key: bytes, root: Path, source: str
) -> WindowExclusion:
    """Drop the rows of subjects on the erasure list that were collected before they asked (the next run excludes
    them whatever the partitions still hold). ``days`` is the order the window's partitions were read in."""
    erased = erased_tokens(loaded, master_key)
    tokens, day_numbers = window_tokens(root, window, days, source)
    hit = np.isin(tokens, erased)
    keep = ~hit
    return WindowExclusion(
        records=window[keep].reset_index(drop=True),
        tokens=tokens[keep],
        day_numbers=day_numbers[keep],
        day_names=list(days),
        erased=erased,
        rows_excluded=int(hit.sum()),
        subjects_excluded=len(np.unique(tokens[hit])),
    )


def kept_rows(window: pd.DataFrame, days: list[str], root: Path, as_of: str) -> pd.DataFrame:
    """The window as its anonymization saw it (for checks that re-read the window): the snapshot's erased
    subjects removed again from the current day indexes. Without a snapshot the window is returned unchanged."""
    path = root / "as_of" / f"{as_of}.npz"
    if not path.is_file():
        return window
    with np.load(path) as snapshot:
        erased = snapshot["erased"]
    tokens, _ = window_tokens(root, window, days, f"anonymized_records[{as_of}]")
    return window[~np.isin(tokens, erased)].reset_index(drop=True)


def snapshot_erased(root: Path, as_of: str) -> np.ndarray:
    """The erased subjects' tokens an as-of window was anonymized with (what its run must propagate)."""
    path = root / "as_of" / f"{as_of}.npz"
    if not path.is_file():
        raise PPMLError(
            f"{path}: field 'erasure snapshot': the training window has no erasure snapshot; "
            "fix: re-materialize anonymized_records for this as-of day before dp_model"
        )
    with np.load(path) as snapshot:
        return snapshot["erased"]


# ------------------------------------------------------------------------------------------------ runs


def _run_stem(model_name: str, version: str) -> str:
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', model_name)}-v{version}"


def bind_run(root: Path, as_of: str, lineage: dict[str, Any]) -> Path:
    """Bind the as-of snapshot to the registered version trained on it (idempotent); return the manifest path.

    ``lineage`` holds model_name, version, mlflow_run_id, dagster_run_id, epsilon, delta and privacy_unit."""
    snapshot = root / "as_of" / f"{as_of}.npz"
    if not snapshot.is_file():
        raise PPMLError(
            f"{snapshot}: field 'erasure snapshot': the training window has no erasure snapshot; "
            "fix: re-materialize anonymized_records for this as-of day before dp_model"
        )
    stem = root / "runs" / _run_stem(lineage["model_name"], str(lineage["version"]))
    manifest = stem.with_suffix(".json")
    if manifest.is_file():
        return manifest
    with np.load(snapshot) as data:
        order = np.argsort(data["tokens"], kind="stable")
        tokens, day_numbers, names = data["tokens"][order], data["day_numbers"][order], data["day_names"]
    _write_private(stem.with_suffix(".npz"), lambda h: np.savez(h, tokens=tokens, day_numbers=day_numbers))
    document = {
        **{k: lineage[k] for k in ("model_name", "mlflow_run_id", "dagster_run_id", "epsilon", "delta")},
        "privacy_unit": lineage.get("privacy_unit", "record"),
        "version": str(lineage["version"]),
        "as_of": as_of,
        "days": [str(day) for day in names],
        "records": len(tokens),
        "subjects": len(np.unique(tokens)),
        "bound_at": datetime.now(UTC).isoformat(),
    }
    _write_private(manifest, lambda handle: handle.write(json.dumps(document, indent=2).encode()))
    return manifest


@dataclass
class RunMatch:
    """One bound run that read records of the queried subjects."""

    manifest: dict[str, Any]
    subjects: int  # how many of the queried subjects it included
    max_records: int  # the most records one of them had in its window
    days: list[str]  # the window days holding those records

    def person_bound(self) -> tuple[float, float]:
        """Group privacy: a person with m records in a record-level (epsilon, delta) run is protected at
        (m epsilon, m e^((m-1) epsilon) delta); a subject-level run's (epsilon, delta) is already per person."""
        m, epsilon, delta = self.max_records, float(self.manifest["epsilon"]), float(self.manifest["delta"])
        if self.manifest.get("privacy_unit") == "subject":
            return epsilon, delta
        return m * epsilon, min(1.0, m * math.exp((m - 1) * epsilon) * delta)


def runs_including(root: Path, tokens: np.ndarray) -> list[RunMatch]:
    """Every bound run whose window included at least one of ``tokens``, oldest version first."""
    matches = []
    wanted = np.unique(tokens)
    for manifest_path in sorted((root / "runs").glob("*.json")) if (root / "runs").is_dir() else []:
        manifest = json.loads(manifest_path.read_text())
        with np.load(manifest_path.with_suffix(".npz")) as data:
            run_tokens, day_numbers = data["tokens"], data["day_numbers"]
        left = np.searchsorted(run_tokens, wanted, side="left")
        counts = np.searchsorted(run_tokens, wanted, side="right") - left
        if not counts.any():
            continue
        hit_days = {int(day_numbers[i]) for s, c in zip(left, counts, strict=True) for i in range(s, s + c)}
        matches.append(
            RunMatch(
                manifest=manifest,
                subjects=int((counts > 0).sum()),
                max_records=int(counts.max()),
                days=[manifest["days"][d] for d in sorted(hit_days)],
            )
        )
    return sorted(matches, key=lambda m: (m.manifest["model_name"], int(m.manifest["version"])))


# ------------------------------------------------------------------------------------------------ propagation


def _version_exists(client: Any, model_name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(model_name, version)
    except MlflowException:
        return False
    return True


def propagate(root: Path, erased: np.ndarray, action: str, client: Any) -> dict[str, Any]:
    """Tag every registered version trained on an erased subject and apply the policy's action to it.

    ``retire``: the version is tagged retired and loses the production alias (the run that propagates trains the
    replacement without the subjects); ``keep``: it stays, tagged with the per-person (epsilon, delta) bound that
    still protects the erased subjects. Only counts and ids of runs and versions are returned (no tokens)."""
    from ppml.deployment import current_production_version, retire_versions, tag_erasure

    if action not in (RETIRE, KEEP):
        raise PPMLError(f"policy: field 'collection.erasure_action': '{action}' is unknown; fix: write retire or keep")
    now = datetime.now(UTC).isoformat(timespec="seconds")
    affected: list[dict[str, Any]] = []
    by_model: dict[str, list[str]] = {}
    for match in runs_including(root, erased):
        name, version = match.manifest["model_name"], match.manifest["version"]
        if not _version_exists(client, name, version):
            continue
        epsilon, delta = match.person_bound()
        was_production = current_production_version(client, name) == version
        tag_erasure(
            client,
            name,
            version,
            match.manifest.get("mlflow_run_id"),
            {
                TAG_ERASURE: "affected",
                TAG_ERASURE_SUBJECTS: str(match.subjects),
                TAG_ERASURE_ACTION: "retired" if action == RETIRE else "kept",
                TAG_EPSILON_BOUND: f"{epsilon:.6g}",
                TAG_DELTA_BOUND: f"{delta:.3g}",
                TAG_PROPAGATED_AT: now,
            },
        )
        by_model.setdefault(name, []).append(version)
        affected.append(
            {
                "model_name": name,
                "version": version,
                "as_of": match.manifest["as_of"],
                "dagster_run_id": match.manifest["dagster_run_id"],
                "mlflow_run_id": match.manifest["mlflow_run_id"],
                "erased_subjects_included": match.subjects,
                "max_records_per_subject": match.max_records,
                "partitions_holding_them": len(match.days),
                "person_epsilon_bound": epsilon,
                "person_delta_bound": delta,
                "action": "retired" if action == RETIRE else "kept",
                "was_production": was_production,
            }
        )
    production = {}
    if action == RETIRE:
        production = {name: retire_versions(client, name, versions) for name, versions in by_model.items()}
    return {
        "action": action,
        "erased_subjects_listed": len(erased),
        "affected_versions": affected,
        "production_alias": production,
        "propagated_at": now,
    }


# ------------------------------------------------------------------------------------------------ status


@dataclass
class ErasureStatus:
    """What one subject's erasure reached; printed by ``ppml erasure-status`` (ids of runs, never of people)."""

    requested: dict[str, str] | None  # the erasure list's row (received_on, basis) when listed
    partitions: list[str]  # de-identified daily partitions that still hold records of the subject
    runs: list[dict[str, Any]]
    known: bool
    action: str


def _request_row(loaded: LoadedPolicy, subject_id: str) -> dict[str, str] | None:
    listed = loaded.policy.collection.erasure_list
    if not listed:
        return None
    path = loaded.resolve(listed)
    if subject_id not in read_erasure_list(path):
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    row = frame[frame["subject_id"].str.strip() == subject_id].iloc[0]
    return {k: str(v) for k, v in row.items() if k != "subject_id"}


def _held_partitions(root: Path, token: np.ndarray) -> list[str]:
    folder = root / "days"
    if not folder.is_dir():
        return []
    held = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as data:
            if np.isin(token, data["tokens"]).any():
                held.append(path.stem)
    return held


def erasure_status(subject_id: str, loaded: LoadedPolicy, master_key: bytes, root: Path, client: Any) -> ErasureStatus:
    """Resolve one subject id to its request, the partitions holding it and every bound run and version."""
    subject_id = subject_id.strip()
    check_key(root, master_key, loaded.policy)
    token = subject_tokens([subject_id], master_key, loaded.policy)
    requested = _request_row(loaded, subject_id)
    partitions = _held_partitions(root, token)
    runs = []
    for match in runs_including(root, token):
        name, version = match.manifest["model_name"], match.manifest["version"]
        epsilon, delta = match.person_bound()
        runs.append(
            {
                **{k: match.manifest[k] for k in ("model_name", "version", "as_of", "dagster_run_id", "mlflow_run_id")},
                "partitions": match.days,
                "records": match.max_records,
                "person_epsilon_bound": epsilon,
                "person_delta_bound": delta,
                **_registry_state(client, name, version),
            }
        )
    known = requested is not None or bool(partitions) or bool(runs)
    return ErasureStatus(requested, partitions, runs, known, loaded.policy.collection.erasure_action)


def _registry_state(client: Any, model_name: str, version: str) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    try:
        found = client.get_model_version(model_name, version)
    except MlflowException:
        return {"registry": "deleted", "aliases": [], "erasure": "-"}
    tags = found.tags or {}
    return {
        "registry": "retired" if tags.get(TAG_RETIRED) else tags.get("ppml.promotion", "registered"),
        "aliases": list(found.aliases or []),
        "erasure": tags.get(TAG_ERASURE_ACTION, "affected") if tags.get(TAG_ERASURE) == "affected" else None,
    }
