"""Read the evidence by dotted path, so that every statement in a document names the field that backs it."""

from __future__ import annotations

from typing import Any

NOT_MEASURED = "not measured in this run"


class Facts:
    """The evidence of one run; ``get('anonymization.min_class_size')`` or None when the run did not produce it."""

    def __init__(self, evidence: dict[str, Any]) -> None:
        self.evidence = evidence

    def get(self, path: str, default: Any = None) -> Any:
        value: Any = self.evidence
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return default
        return value

    def check(self, name: str) -> dict[str, Any]:
        """The gate's verdict of one requirement ({} when the run did not judge it)."""
        return next((c for c in self.evidence.get("checks") or [] if c.get("name") == name), {})

    def has(self, path: str) -> bool:
        return self.get(path) is not None


def number(value: Any, digits: int = 3) -> str:
    """A measured number for prose: floats to ``digits`` significant figures, the rest as written."""
    if value is None:
        return NOT_MEASURED
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def percent(value: Any, digits: int = 1) -> str:
    return NOT_MEASURED if value is None else f"{100 * float(value):.{digits}f}%"
