"""Lifecycle step 8: records and reports — evidence.json for machines, an HTML report for the auditor.

evidence.json is the complete, machine-readable record of one training run's lineage and verdicts (policy hash,
partitions, row counts, anonymization result, epsilon/delta spent, metrics, check results, MLflow ids, Dagster
run id). report.html renders the same evidence for a person to read and sign. Both hold aggregates only; the
writer refuses evidence that contains a value from the caller's list of forbidden (personal) strings.

Jinja2 renders the page because it autoescapes and is already a dependency of Dagster; the attack ROC curves are
inline SVG. Beside it go the regulatory documents, their plots and report.pdf (:mod:`ppml.documents`); the
evidence pack that signs all of them is written by the reporting asset once they exist (:mod:`ppml.evidence`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ppml import __version__
from ppml.documents.guarantees import audit_strength
from ppml.documents.pdf import write_pdf
from ppml.documents.render import document_links, write_documents
from ppml.errors import PPMLError

TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    evidence: Path
    documents: tuple[Path, ...] = ()

    def all(self) -> list[Path]:
        """Every file written, evidence.json first: what the evidence pack hashes."""
        return [self.evidence, self.html, *self.documents]


def roc_svg(curves: dict[str, dict[str, list[float]]], size: int = 320) -> str:
    """A small self-contained SVG plot of ROC curves (FPR on x, TPR on y) with the chance diagonal."""
    colours = ["#c0392b", "#2471a3", "#7d3c98", "#1e8449", "#b9770e", "#5d6d7e"]
    pad = 36
    span = size - 2 * pad

    def point(x: float, y: float) -> str:
        return f"{pad + x * span:.1f},{size - pad - y * span:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 190}" height="{size}" role="img">',
        f'<rect x="{pad}" y="{pad}" width="{span}" height="{span}" fill="none" stroke="#999"/>',
        f'<polyline points="{point(0, 0)} {point(1, 1)}" fill="none" stroke="#bbb" stroke-dasharray="4 3"/>',
        f'<text x="{size / 2}" y="{size - 6}" font-size="11" text-anchor="middle">false positive rate</text>',
        f'<text x="12" y="{size / 2}" font-size="11" transform="rotate(-90 12 {size / 2})" '
        'text-anchor="middle">true positive rate</text>',
    ]
    for index, (name, curve) in enumerate(sorted(curves.items())):
        colour = colours[index % len(colours)]
        points = " ".join(point(x, y) for x, y in zip(curve["fpr"], curve["tpr"], strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        y = pad + 14 + index * 16
        parts.append(f'<rect x="{size + 4}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{size + 18}" y="{y}" font-size="11">{_escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


#: Shorter values are not searched for: they would match aggregates by chance.
MIN_FORBIDDEN_LENGTH = 6


def _find_forbidden(document: str, forbidden: Iterable[str]) -> bool:
    """Whether any forbidden value (of at least 6 characters) occurs in ``document``.

    One substring search per value was the compliance step's largest cost (hundreds of thousands of identifier
    values against a report of a few hundred kB: seconds to minutes); the document's 6-character windows as a set
    leave only the values whose first 6 characters occur at all, and only those are searched for."""
    width = MIN_FORBIDDEN_LENGTH
    by_prefix: dict[str, list[str]] = {}
    for value in forbidden:
        if value and len(value) >= width:
            by_prefix.setdefault(value[:width], []).append(value)
    if not by_prefix:
        return False
    windows = {document[i : i + width] for i in range(len(document) - width + 1)}
    return any(value in document for prefix in windows & by_prefix.keys() for value in by_prefix[prefix])


def _atomic_write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))


def release_safety_html(release_safety: dict[str, Any]) -> str:
    """The report's release-safety section alone: every released column's figures, action and outcome."""
    return _environment().get_template("release_safety.html.j2").render(rs=release_safety)


def write_report(
    evidence: dict[str, Any], directory: Path, forbidden_values: Iterable[str] = (), *, documents: bool = True
) -> ReportFiles:
    """Write evidence.json and report.html into ``directory`` (atomically, both or neither is updated), and unless
    ``documents`` is false the documents, plots and report.pdf (the gate skips them when the model passed: the
    reporting asset writes the final ones)."""
    evidence = {"ppml_version": __version__, "generated_at": datetime.now(UTC).isoformat(), **evidence}
    document = json.dumps(evidence, indent=2, sort_keys=True, default=str)
    if _find_forbidden(document, forbidden_values):
        raise PPMLError(
            "compliance report: field '(content)': the evidence contains a value of a direct identifier; "
            "fix: report aggregates only (this is a bug in the stage that produced the value)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    written, bodies = write_documents(evidence, directory) if documents else ([], {})
    written += [write_pdf(evidence, bodies, directory)] if documents else []
    pack = {
        "documents": [(name, page.title) for name, (page, _) in bodies.items()],
        "plots": [p.stem for p in written if p.suffix == ".png"],
        "pdf": documents,
        "links": document_links(evidence),
        "audit_strength": audit_strength(evidence["audit"]) if evidence.get("audit") else None,
    }
    html = _environment().get_template("report.html.j2").render(e=evidence, roc_svg=roc_svg, pack=pack)
    files = ReportFiles(html=directory / "report.html", evidence=directory / "evidence.json", documents=tuple(written))
    _atomic_write_text(files.evidence, document)
    _atomic_write_text(files.html, html)
    return files
