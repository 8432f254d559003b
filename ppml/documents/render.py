"""Render the regulatory documents of one run as HTML files beside the report (Jinja2, autoescaped).

Which documents a run gets follows its regulation: GDPR runs get the DPIA and the Art. 30 record, HIPAA runs the
Safe Harbor checklist with the Expert Determination worksheet; every run gets the model card, the AI Act Annex
IV sections and the plain-language guarantees. A value the evidence lacks renders as "not measured"; a fact
only the policy can state (controller, DPO, recipients) renders as "NOT STATED" naming the policy field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from ppml.documents.facts import NOT_MEASURED, Facts, number
from ppml.documents.guarantees import guarantees
from ppml.documents.plots import draw_plots
from ppml.documents.safe_harbor import checklist, expert_determination

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
DAGSTER_UI_ENV, MLFLOW_UI_ENV = "PPML_DAGSTER_UI_URL", "PPML_MLFLOW_UI_URL"
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222;line-height:1.45}"
    "table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #bbb;padding:.25em .5em;"
    "vertical-align:top;font-size:.92em}th{background:#f2f2f2}i{color:#666;font-size:.85em}"
)


@dataclass(frozen=True)
class Document:
    name: str
    title: str
    template: str
    regulations: frozenset[str]


DOCUMENTS = [
    Document("dpia", "Data protection impact assessment", "doc_dpia.html.j2", frozenset({"GDPR"})),
    Document("art30_record", "Record of processing activities", "doc_art30.html.j2", frozenset({"GDPR"})),
    Document(
        "safe_harbor", "HIPAA Safe Harbor and Expert Determination", "doc_safe_harbor.html.j2", frozenset({"HIPAA"})
    ),
    Document("model_card", "Model card", "doc_model_card.html.j2", frozenset({"GDPR", "HIPAA"})),
    Document(
        "annex_iv", "AI Act Annex IV technical documentation", "doc_annex_iv.html.j2", frozenset({"GDPR", "HIPAA"})
    ),
    Document(
        "guarantees", "Privacy guarantees in plain language", "doc_guarantees.html.j2", frozenset({"GDPR", "HIPAA"})
    ),
]


def documents_for(evidence: dict[str, Any]) -> list[Document]:
    regulation = Facts(evidence).get("policy.regulation")
    return [d for d in DOCUMENTS if regulation in d.regulations]


def document_links(evidence: dict[str, Any]) -> dict[str, str]:
    """Links to the Dagster run and the MLflow run (the UIs `ppml ui` starts, or PPML_DAGSTER_UI_URL /
    PPML_MLFLOW_UI_URL where they are served elsewhere)."""
    return _links(Facts(evidence))


def _links(f: Facts) -> dict[str, str]:
    dagster = os.environ.get(DAGSTER_UI_ENV, "http://127.0.0.1:3000").rstrip("/")
    mlflow = os.environ.get(MLFLOW_UI_ENV, "http://127.0.0.1:5000").rstrip("/")
    experiment = f.get("mlflow.experiment_id", "0")
    return {
        "dagster": f"{dagster}/runs/{f.get('dagster_run_id', '')}",
        "mlflow": f"{mlflow}/#/experiments/{experiment}/runs/{f.get('training.mlflow_run_id', '')}",
    }


def _context(evidence: dict[str, Any], plots: set[str]) -> dict[str, Any]:
    f = Facts(evidence)

    def v(path: str) -> str:
        return number(f.get(path))

    def stated(path: str, field: str) -> str:
        value = f.get(path)
        return str(value) if value else f"NOT STATED in the policy ({field})"

    def listed(path: str, field: str, empty: str | None = None) -> str:
        values = f.get(path)
        if values is None:
            return f"NOT STATED in the policy ({field})"
        return "; ".join(map(str, values)) or (empty or f"NOT STATED in the policy ({field})")

    def ci(path: str) -> str:
        interval = f.get(path)
        return f"[{number(interval[0])}, {number(interval[1])}]" if interval else NOT_MEASURED

    def check(name: str, key: str) -> str:
        return number(f.check(name).get(key))

    def fmt(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k}: {fmt(x)}" for k, x in value.items())
        if isinstance(value, list):
            return ", ".join(fmt(x) for x in value)
        return number(value)

    actions = ", ".join(f"{c}: {a}" for c, a in (f.get("data.identifier_actions") or {}).items()) or NOT_MEASURED
    return {
        "f": f,
        "v": v,
        "stated": stated,
        "listed": listed,
        "ci": ci,
        "check": check,
        "fmt": fmt,
        "actions": actions,
        "links": _links(f),
        "plots": plots,
        "guarantees": [g.to_dict() for g in guarantees(evidence)],
        "safe_harbor": checklist(evidence),
        "expert": expert_determination(evidence),
    }


def _environment() -> Environment:
    return Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]), undefined=StrictUndefined
    )


def render_bodies(evidence: dict[str, Any], plots: set[str]) -> dict[str, tuple[Document, str]]:
    """Each applicable document's body HTML (the HTML files wrap it in a page; the PDF renders it as is)."""
    environment, context = _environment(), _context(evidence, plots)
    return {d.name: (d, environment.get_template(d.template).render(**context)) for d in documents_for(evidence)}


def write_documents(evidence: dict[str, Any], directory: Path) -> tuple[list[Path], dict[str, tuple[Document, str]]]:
    """Plots under ``directory/plots`` and one HTML file per document under ``directory/documents``."""
    drawn = draw_plots(evidence, directory / "plots")
    bodies = render_bodies(evidence, set(drawn))
    folder = directory / "documents"
    folder.mkdir(parents=True, exist_ok=True)
    written = list(drawn.values())
    for name, (document, body) in bodies.items():
        page = body.replace('src="plots/', 'src="../plots/')
        html = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{document.title}</title>'
            f"<style>{STYLE}</style></head><body>{page}</body></html>"
        )
        path = folder / f"{name}.html"
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(html, encoding="utf-8")
        os.replace(temporary, path)
        written.append(path)
    return written, bodies
