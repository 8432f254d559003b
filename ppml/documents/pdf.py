"""One PDF of the report's summary and every document, through fpdf2.

fpdf2 is pure Python (its dependencies, Pillow, fontTools and defusedxml, ship wheels), needs no browser or
system library (unlike WeasyPrint's Pango or a headless Chromium), and renders the documents' simple HTML
(headings, paragraphs, lists, tables, images) with ``write_html``, so the PDF and the HTML come from one
template. Text is set in DejaVu Sans, the TrueType font matplotlib already ships, because the PDF core fonts
cannot show epsilon or a non-Latin-1 name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ppml.documents.facts import Facts, number

FONT = "DejaVu"


def _font_files() -> dict[str, Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return {
        "": folder / "DejaVuSans.ttf",
        "B": folder / "DejaVuSans-Bold.ttf",
        "I": folder / "DejaVuSans-Oblique.ttf",
        "BI": folder / "DejaVuSans-BoldOblique.ttf",
    }


def _document() -> Any:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=True, margin=15)
    for style, path in _font_files().items():
        pdf.add_font(FONT, style, str(path))
    pdf.set_font(FONT, size=10)
    return pdf


def _summary(evidence: dict[str, Any]) -> str:
    f = Facts(evidence)
    rows = "".join(
        f"<tr><td>{c['name']}</td><td>{number(c['measured'])}</td><td>{number(c['limit'])}</td>"
        f"<td>{'pass' if c['passed'] else 'FAIL'}</td></tr>"
        for c in f.get("checks") or []
    )
    return (
        f"<h1>Compliance report: {f.get('decision.model_name')} v{f.get('decision.version')}</h1>"
        f"<p>Decision: <b>{f.get('decision.status')}</b>. Policy {f.get('policy.name')} ({f.get('policy.regulation')}),"
        f" as of {f.get('as_of')}. The signed evidence pack beside this file (evidence_pack.json) hashes this PDF;"
        " verify it with <b>ppml verify</b> on its folder.</p>"
        '<table border="1"><thead><tr><th>requirement</th><th>measured</th><th>limit</th><th>verdict</th></tr>'
        f"</thead><tbody>{rows}</tbody></table>"
    )


def write_pdf(evidence: dict[str, Any], bodies: dict[str, tuple[Any, str]], directory: Path) -> Path:
    """``directory/report.pdf``: the verdict table, then every document (its plots resolved from ``directory``)."""
    from html import escape

    pdf = _document()
    pdf.set_title(escape(f"ppml compliance report {Facts(evidence).get('decision.model_name')}"))
    pdf.add_page()
    pdf.write_html(_summary(evidence))
    for _, (_, body) in bodies.items():
        pdf.add_page()
        pdf.write_html(body.replace('src="plots/', f'src="{directory / "plots"}/'))
    path = directory / "report.pdf"
    temporary = path.with_name(f".{path.name}.tmp")
    pdf.output(str(temporary))
    os.replace(temporary, path)
    return path
