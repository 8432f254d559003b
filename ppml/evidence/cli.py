"""``ppml verify DIR``: the auditor's check of an evidence pack (exit 0 only when every hash and the signature hold)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ppml.evidence.verify import verify_pack

console = Console()
errors = Console(stderr=True)


def verify_command(
    directory: Annotated[Path, typer.Argument(help="The report folder holding evidence_pack.json.")],
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="The controller's published PEM public key (default: the pack's own)."),
    ] = None,
) -> None:
    """Recompute every hash of the evidence pack from the stored artifacts and check its Ed25519 signature."""
    result = verify_pack(directory, public_key)
    for problem in result.problems:
        errors.print(f"[bold red]FAILED:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True, markup=False)
    if not result.ok:
        errors.print(
            f"evidence pack {directory}: {len(result.problems)} problem(s); do not sign it",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    console.print(
        f"evidence pack {directory}: OK - {result.files_checked} artifacts recomputed, signature valid "
        f"({result.key_source}), root sha256 {result.root_sha256}",
        highlight=False,
        soft_wrap=True,
        markup=False,
    )
