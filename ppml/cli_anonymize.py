"""The `ppml anonymize` command's options, in a module that imports nothing heavy.

Why: typer reads every command's signature when any `ppml` command starts, and the anonymization package pulls in
pandas and its compiled kernels (over a second). The signature lives here; the engine is imported when the
command runs (:func:`ppml.anonymization.cli.run_anonymize`).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

#: The variants and metrics the engine implements, offered as the options' choices (a test keeps them equal to
#: the engine's own lists) and checked again by the engine for API callers.
L_VARIANTS = ["distinct", "entropy", "recursive"]
T_VARIANTS = ["equal", "hierarchical"]
METRIC_NAMES = ["loss", "discernibility", "entropy", "aecs"]
LVariant = StrEnum("LVariant", {name: name for name in L_VARIANTS})
TVariant = StrEnum("TVariant", {name: name for name in T_VARIANTS})
Metric = StrEnum("Metric", {name: name for name in METRIC_NAMES})


def anonymize_command(
    input: Annotated[Path, typer.Option("--input", help="CSV file to anonymize (read as text).")],
    out: Annotated[Path, typer.Option("--out", help="Anonymized CSV (suppressed records removed).")],
    report: Annotated[Path, typer.Option("--report", help="JSON report: transformation, quality, risk, timing.")],
    qi: Annotated[str | None, typer.Option("--qi", help="Quasi-identifiers, comma-separated, in order.")] = None,
    hierarchies: Annotated[
        Path | None, typer.Option("--hierarchies", help="Folder with one ARX hierarchy CSV per column: DIR/c.csv.")
    ] = None,
    hierarchy: Annotated[
        list[str] | None, typer.Option("--hierarchy", help="Override one hierarchy: NAME=FILE (repeatable).")
    ] = None,
    sensitive: Annotated[str | None, typer.Option("--sensitive", help="Sensitive attribute(s) for l/t.")] = None,
    k: Annotated[int | None, typer.Option("--k", help="k-anonymity.")] = None,
    l_value: Annotated[float | None, typer.Option("--l", help="l-diversity of the sensitive attribute(s).")] = None,
    l_variant: Annotated[LVariant, typer.Option("--l-variant", help="The l-diversity variant.")] = LVariant.distinct,
    c: Annotated[float | None, typer.Option("--c", help="c of recursive (c,l)-diversity.")] = None,
    t: Annotated[float | None, typer.Option("--t", help="t-closeness of the sensitive attribute(s).")] = None,
    t_variant: Annotated[TVariant, typer.Option("--t-variant", help="The t-closeness distance.")] = TVariant.equal,
    suppression: Annotated[float, typer.Option("--suppression", help="Largest share of records removed.")] = 0.0,
    metric: Annotated[Metric, typer.Option("--metric", help="The information-loss metric.")] = Metric.loss,
    sep: Annotated[str, typer.Option("--sep", help="Field separator of the input (and output) CSV.")] = ",",
    policy: Annotated[
        Path | None, typer.Option("--policy", help="Take QIs, hierarchies and models from a policy file.")
    ] = None,
) -> None:
    """Anonymize a CSV with optimal full-domain generalization and record suppression (ARX-compatible)."""
    from ppml.anonymization.cli import run_anonymize

    run_anonymize(
        input=input,
        out=out,
        report=report,
        qi=qi,
        hierarchies=hierarchies,
        hierarchy=hierarchy,
        sensitive=sensitive,
        k=k,
        l_value=l_value,
        l_variant=str(l_variant),
        c=c,
        t=t,
        t_variant=str(t_variant),
        suppression=suppression,
        metric=str(metric),
        sep=sep,
        policy=policy,
    )
