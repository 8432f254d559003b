"""A Great Expectations validation rendered as a page a person reads: one HTML file per suite and partition.

Why not GX Data Docs: ppml validates in an ephemeral, in-memory GX context (nothing of the records is written
by GX), and GX's site builder would need a file-backed project, write its own site of assets and JavaScript into
a temporary folder per run, and take seconds per suite to render. This page renders the same validation result
(the expectation, its column and rule, the row and unexpected counts, the numeric observation) with the report's
own template engine, in milliseconds, owner-only beside the reports. Aggregates only, as the suite keeps them.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ppml import __version__
from ppml.expectations import SuiteOutcome

TEMPLATES = Path(__file__).resolve().parent / "templates"


def page_path(reports_dir: Path, label: str, suite: str) -> Path:
    """``<reports>/data_quality/<partition or range>/<suite>.html``."""
    return reports_dir / "data_quality" / label / f"{suite}.html"


def write_data_quality_page(outcome: SuiteOutcome, asset: str, label: str, reports_dir: Path) -> Path:
    """Render the suite's result for ``asset`` at ``label`` (a partition or a range); return the page's path.

    Written beside and renamed (a reader never sees half a page), 0600 in 0700 folders."""
    environment = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    html = environment.get_template("data_quality.html.j2").render(
        s=outcome, asset=asset, label=label, version=__version__, generated_at=datetime.now(UTC).isoformat()
    )
    path = page_path(reports_dir, label, outcome.suite)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(html)
    os.replace(partial, path)
    return path
