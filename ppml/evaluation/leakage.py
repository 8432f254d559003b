"""Lifecycle step 6, compliance evidence: no direct identifier reaches features, artifacts or MLflow.

De-identification drops or pseudonymises direct identifiers, but a later refactor can put one back: a feature
list built from ``df.columns``, a debug CSV written next to the model, a run parameter holding a sample row.
This scanner checks, after training, that neither an identifier's column name nor any of its values (raw or
pseudonymised) appears in feature names, data-set columns, files under the artifact directory (text and
binary alike, including the members of zip archives such as torch checkpoints) or MLflow params and tags.

Findings name the identifier column, the kind of hit and where it was found; they never repeat the value.
"""

from __future__ import annotations

import functools
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ppml.errors import input_error
from ppml.evaluation._common import Verdict

SOURCE = "identifier leakage scan"
_TOKEN = re.compile(rb"[A-Za-z0-9@._+\-]{4,}")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9@._+\-]+$")
_STRIP = b"._+-"
_NAME_SEPARATORS = ("_", "=", ":", ".", "[", " ", "-")


@dataclass(frozen=True)
class Finding:
    """One identifier seen where it must not be. ``identifier`` is the column, never the value."""

    identifier: str
    kind: str  # "column_name" or "value"
    where: str  # "features", "columns", "artifact", "mlflow_param", "mlflow_tag"
    location: str  # feature/column name, file path (relative to the scanned folder) or param/tag key
    count: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "kind": self.kind,
            "where": self.where,
            "location": self.location,
            "count": self.count,
        }


@dataclass(frozen=True)
class LeakageReport:
    findings: list[Finding]
    scanned: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "n_findings": len(self.findings),
            "findings": [f.to_dict() for f in self.findings],
            "scanned": self.scanned,
            "skipped": self.skipped,
        }


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _name_hits(identifier: str, name: str) -> bool:
    """A name carries the identifier if it equals it or starts with it plus a separator (one-hot names)."""
    lowered, ident = name.lower().strip(), identifier.lower().strip()
    if _normalise(name) == _normalise(identifier):
        return True
    return any(lowered.startswith(ident + sep) for sep in _NAME_SEPARATORS)


class _ValueIndex:
    """Identifier values for fast search: token-like values by set lookup, the rest by substring."""

    def __init__(self, values: Mapping[str, Iterable[Any]], min_length: int) -> None:
        self.tokens: dict[bytes, str] = {}
        self.phrases: list[tuple[bytes, str]] = []
        self.skipped_short = 0
        for column, column_values in values.items():
            for raw in column_values:
                if raw is None or (isinstance(raw, float) and raw != raw):
                    continue
                text = str(raw).strip()
                if len(text) < min_length:
                    self.skipped_short += 1
                    continue
                if _TOKEN_CHARS.match(text):
                    self.tokens.setdefault(text.lower().encode(), column)
                else:
                    self.phrases.append((text.lower().encode("utf-8", "replace"), column))

    def __bool__(self) -> bool:
        return bool(self.tokens or self.phrases)

    @functools.cached_property
    def _phrase_automaton(self) -> Any:
        """All phrases in one Aho-Corasick automaton (pyahocorasick): one pass over a payload finds every
        phrase, where one ``bytes.count`` per phrase and payload was the compliance step's largest cost
        (tens of thousands of names and addresses against every model file, parameter and tag)."""
        import ahocorasick

        automaton = ahocorasick.Automaton()
        for phrase, column in self.phrases:
            key = phrase.decode("latin-1")  # bytes as one character each: matches are byte matches
            if key not in automaton:
                automaton.add_word(key, column)
        automaton.make_automaton()
        return automaton

    def search(self, data: bytes) -> dict[str, int]:
        """Hits per identifier column in ``data`` (bytes, matched case-insensitively)."""
        hits: dict[str, int] = {}
        lowered = data.lower()
        if self.tokens:
            for match in _TOKEN.finditer(lowered):
                for candidate in _candidates(match.group()):
                    column = self.tokens.get(candidate)
                    if column is not None:
                        hits[column] = hits.get(column, 0) + 1
                        break
        if self.phrases:
            for _end, column in self._phrase_automaton.iter(lowered.decode("latin-1")):
                hits[column] = hits.get(column, 0) + 1
        return hits


def _candidates(token: bytes) -> Iterable[bytes]:
    """The token and its dot-separated runs: "123-45-6789.json" must match the value "123-45-6789"."""
    yield token
    yield token.strip(_STRIP)
    parts = token.split(b".")
    if 1 < len(parts) <= 8:
        for start in range(len(parts)):
            for stop in range(start + 1, len(parts) + 1):
                if stop - start < len(parts):
                    yield b".".join(parts[start:stop])


def _file_payloads(path: Path, max_bytes: int) -> Iterable[tuple[str, bytes]]:
    """The file's bytes, and for zip archives (torch checkpoints, MLflow bundles) each member's bytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.is_dir() and info.file_size <= max_bytes:
                    yield f"!{info.filename}", archive.read(info)
    yield "", path.read_bytes()


def scan_for_identifiers(
    identifier_columns: Iterable[str],
    *,
    identifier_values: Mapping[str, Iterable[Any]] | None = None,
    feature_names: Iterable[str] = (),
    column_names: Iterable[str] = (),
    artifact_dir: Path | str | None = None,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    min_value_length: int = 6,
    max_file_bytes: int = 200 * 1024 * 1024,
) -> LeakageReport:
    """Look for direct identifiers (names from the policy, values raw or pseudonymised) everywhere they must
    not be. Values shorter than ``min_value_length`` are skipped (they would match by chance) and counted."""
    identifiers = [c for c in identifier_columns if c]
    if not identifiers:
        raise input_error(
            SOURCE, "identifier_columns", "no identifier columns given", "pass the policy's schema.direct_identifiers"
        )
    index = _ValueIndex(identifier_values or {}, min_value_length)
    findings: list[Finding] = []
    scanned = {
        "features": 0,
        "columns": 0,
        "files": 0,
        "params": 0,
        "tags": 0,
        "identifier_values": len(index.tokens) + len(index.phrases),
    }
    skipped = {"short_values": index.skipped_short, "large_files": 0}

    # Names are reported by position (``features[3]``): a one-hot name such as "email=jane@..." would
    # otherwise put the very value into the evidence.
    for where, names in (("features", feature_names), ("columns", column_names)):
        for position, name in enumerate(names):
            scanned[where] += 1
            location = f"{where}[{position}]"
            for identifier in identifiers:
                if _name_hits(identifier, str(name)):
                    findings.append(Finding(identifier, "column_name", where, location))
            if index:
                for column, count in index.search(str(name).encode("utf-8", "replace")).items():
                    findings.append(Finding(column, "value", where, location, count))

    if artifact_dir is not None:
        findings += _scan_artifacts(Path(artifact_dir), identifiers, index, scanned, skipped, max_file_bytes)

    for where, mapping in (("mlflow_param", params), ("mlflow_tag", tags)):
        for key, value in (mapping or {}).items():
            scanned["params" if where == "mlflow_param" else "tags"] += 1
            pieces = [str(key), *re.split(r"[\s,;|\[\]()'\"{}]+", str(value))]
            for identifier in identifiers:
                if any(piece and _name_hits(identifier, piece) for piece in pieces):
                    findings.append(Finding(identifier, "column_name", where, str(key)))
            if index:
                for column, count in index.search(f"{key} {value}".encode("utf-8", "replace")).items():
                    findings.append(Finding(column, "value", where, str(key), count))
    return LeakageReport(findings, scanned, skipped)


def _scan_artifacts(
    root: Path,
    identifiers: list[str],
    index: _ValueIndex,
    scanned: dict[str, int],
    skipped: dict[str, int],
    max_file_bytes: int,
) -> list[Finding]:
    """Every artifact file (and archive member): names for identifier names and values, contents for values."""
    if not root.is_dir():
        raise input_error(
            SOURCE,
            "artifact_dir",
            f"{root} is not a directory",
            "pass the folder the model artifacts were written to",
        )
    findings: list[Finding] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.stat().st_size > max_file_bytes:
            skipped["large_files"] += 1
            continue
        scanned["files"] += 1
        name_hits = index.search(relative.encode("utf-8", "replace")) if index else {}
        if name_hits:  # the path itself holds a value: report the file by number, not by name
            relative = f"file #{scanned['files']} (name withheld)"
            for column, count in name_hits.items():
                findings.append(Finding(column, "value", "artifact", relative, count))
        for identifier in identifiers:
            if _name_hits(identifier, path.name):
                findings.append(Finding(identifier, "column_name", "artifact", relative))
        # Contents are searched for values only: column names such as "name" or "zip" are ordinary
        # words in YAML and JSON metadata; feature lists are checked through ``feature_names``.
        for member, payload in _file_payloads(path, max_file_bytes):
            location = relative + member
            if index:
                for column, count in index.search(payload).items():
                    findings.append(Finding(column, "value", "artifact", location, count))
    return findings


def leakage_verdict(report: LeakageReport) -> Verdict:
    """The gate: zero findings."""
    where = sorted({f"{f.identifier}@{f.where}" for f in report.findings})
    detail = "no direct identifier found" if report.passed else f"found: {', '.join(where)}"
    return Verdict.check("no_direct_identifier_leakage", float(len(report.findings)), 0.0, "<=", detail)
