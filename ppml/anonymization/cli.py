"""``ppml anonymize``: the engine behind the ``anonymized_records`` asset, from the command line.

Registered by ppml/cli.py as ``app.command("anonymize")(anonymize_command)``. Bad input exits with code 2 and one
line on stderr; nothing is written then (outputs go to a temporary file that is renamed only on success).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd
import typer

from ppml.anonymization.deidentify import deidentify_for_release
from ppml.anonymization.engine import AnonymizationConfig, anonymize
from ppml.anonymization.hierarchy import Hierarchy
from ppml.anonymization.metrics import METRICS
from ppml.anonymization.models import LDiversity, TCloseness
from ppml.anonymization.verify import verify_release
from ppml.cli_anonymize import L_VARIANTS, T_VARIANTS, anonymize_command
from ppml.errors import PPMLError, input_error

__all__ = ["anonymize_command", "read_table", "run_anonymize"]


def read_table(path: Path, sep: str) -> pd.DataFrame:
    """Read a CSV as text: values must match the hierarchies' labels exactly (no number or NA parsing)."""
    if not path.is_file():
        raise input_error(str(path), "(file)", "input file not found", "pass an existing CSV file")
    try:
        return pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            engine="python" if len(sep) > 1 else "c",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise input_error(str(path), "(file)", f"cannot parse as CSV ({problem})", "check --sep and the file") from None


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()] if value else []


def build_cli_config(
    *,
    qi: str | None,
    hierarchies: Path | None,
    hierarchy: list[str],
    sensitive: str | None,
    k: int | None,
    l_value: float | None,
    l_variant: str,
    c: float | None,
    t: float | None,
    t_variant: str,
    suppression: float,
    metric: str,
    source: str,
) -> AnonymizationConfig:
    """Translate the command-line options into an engine config (errors name the option and the fix)."""
    names = _split(qi)
    if not names:
        raise input_error("command line", "--qi", "no quasi-identifiers given", "pass --qi a,b,c or --policy FILE")
    if k is None:
        raise input_error("command line", "--k", "k is required", "pass --k 5 (or --policy FILE)")
    overrides: dict[str, Path] = {}
    for item in hierarchy:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise input_error(
                "command line", "--hierarchy", f"'{item}' is not NAME=FILE", "e.g. --hierarchy age=age.csv"
            )
        overrides[name.strip()] = Path(file.strip())

    def hierarchy_of(name: str) -> Path:
        if name in overrides:
            return overrides[name]
        if hierarchies is None:
            raise input_error(
                "command line", "--hierarchies", f"no hierarchy for '{name}'", "pass --hierarchies DIR or --hierarchy"
            )
        return hierarchies / f"{name}.csv"

    quasi = {name: Hierarchy.from_csv(hierarchy_of(name)) for name in names}
    sensitive_names = _split(sensitive)
    if (l_value is not None or t is not None) and not sensitive_names:
        raise input_error("command line", "--sensitive", "--l/--t need a sensitive attribute", "pass --sensitive s")
    if l_variant not in L_VARIANTS:
        raise input_error(
            "command line", "--l-variant", f"unknown variant '{l_variant}'", "use distinct, entropy, recursive"
        )
    if t_variant not in T_VARIANTS:
        raise input_error("command line", "--t-variant", f"unknown variant '{t_variant}'", "use equal or hierarchical")
    if l_value is not None and l_variant == "recursive" and c is None:
        raise input_error("command line", "--c", "recursive (c,l)-diversity needs c", "pass --c 2")
    if metric not in METRICS:
        raise input_error("command line", "--metric", f"unknown metric '{metric}'", f"use one of {list(METRICS)}")
    try:
        l_models = tuple(LDiversity(s, l_value, l_variant, c) for s in sensitive_names) if l_value else ()  # type: ignore[arg-type]
        t_models = tuple(TCloseness(s, t, t_variant) for s in sensitive_names) if t is not None else ()  # type: ignore[arg-type]
    except ValueError as exc:
        raise input_error("command line", "--l/--t", str(exc), "see ppml anonymize --help") from None
    sensitive_hierarchies = (
        {s: Hierarchy.from_csv(hierarchy_of(s)) for s in sensitive_names} if t_variant == "hierarchical" and t else {}
    )
    return AnonymizationConfig(
        quasi_identifiers=quasi,
        k=k,
        l_diversity=l_models,
        t_closeness=t_models,
        suppression_limit=suppression,
        metric=metric,
        sensitive_hierarchies=sensitive_hierarchies,
        source=source,
    )


def _policy_release(data: pd.DataFrame, policy: Path, metric: str, source: str):  # type: ignore[no-untyped-def]
    """De-identify with the policy's actions, then anonymize with release safety (what the asset does)."""
    from ppml.anonymization.policy_config import config_from_policy, rules_from_policy, with_missing_values
    from ppml.anonymization.release_safety import safe_release
    from ppml.policy import load_policy

    loaded = load_policy(policy)
    data, actions = deidentify_for_release(data, loaded.policy, source)
    config = config_from_policy(loaded, metric=metric, source=source)
    config = with_missing_values(config, data, loaded.policy.schema_.missing_value_marker)
    safety = safe_release(data, config, rules_from_policy(loaded))
    return data, config, safety, actions


def run_anonymize(
    *,
    input: Path,
    out: Path,
    report: Path,
    qi: str | None = None,
    hierarchies: Path | None = None,
    hierarchy: list[str] | None = None,
    sensitive: str | None = None,
    k: int | None = None,
    l_value: float | None = None,
    l_variant: str = "distinct",
    c: float | None = None,
    t: float | None = None,
    t_variant: str = "equal",
    suppression: float = 0.0,
    metric: str = "loss",
    sep: str = ",",
    policy: Path | None = None,
) -> None:
    """Anonymize a CSV with optimal full-domain generalization and record suppression (ARX-compatible)."""
    try:
        data = read_table(input, sep)
        safety = None
        if policy is not None:
            data, config, safety, identifier_actions = _policy_release(data, policy, metric, str(input))
        else:
            config = build_cli_config(
                qi=qi,
                hierarchies=hierarchies,
                hierarchy=hierarchy or [],
                sensitive=sensitive,
                k=k,
                l_value=l_value,
                l_variant=l_variant,
                c=c,
                t=t,
                t_variant=t_variant,
                suppression=suppression,
                metric=metric,
                source=str(input),
            )
        result = safety.anonymization if safety is not None else anonymize(data, config)
        if safety is not None:
            config = safety.config
        violations = verify_release(result.data, config, original=data)
        if violations:  # pragma: no cover - would be an engine bug; never release then
            raise PPMLError(f"{input}: field 'privacy': release failed verification: {violations[0].detail}")
        document = result.to_report()
        document["input"] = str(input)
        document["output"] = str(out)
        document["verification"] = {"passed": True, "violations": []}
        if safety is not None:
            document["release_safety"] = safety.to_dict()
            document["direct_identifiers"] = identifier_actions
        out_sep = sep if len(sep) == 1 else sep.strip()[:1] or ","
        _atomic_write(out, lambda p: result.data.to_csv(p, sep=out_sep, index=False))
        try:
            _atomic_write(report, lambda p: p.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8"))
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    except PPMLError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(code=2) from None
    summary = (
        f"transformation {result.transformation_levels}, {config.metric} {result.quality['value']:.6f}, "
        f"{result.suppressed_records} suppressed, {result.equivalence_classes} classes "
        f"(min {result.min_class_size}), {result.transformations_checked} transformations checked in "
        f"{result.seconds:.3f} s"
    )
    print(summary, file=sys.stdout)
