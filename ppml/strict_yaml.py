"""Bounded, strict YAML for files an operator hands to ppml (policies).

PyYAML's ``safe_load`` is safe from code execution but not from surprises: anchors and aliases let a few lines
expand into gigabytes (the "billion laughs" document), a repeated key silently keeps the later value, and deep
nesting exhausts the recursion limit. A privacy contract has no use for any of these, so this loader refuses
them with one line naming the file, the place and the fix, before anything is expanded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

from ppml.errors import input_error

#: A policy is a few kilobytes; anything far larger is a mistake or an attack.
MAX_YAML_BYTES = 1_000_000


class _RefusedConstruct(yaml.YAMLError):
    """A YAML feature the strict loader refuses (carries the problem, the fix and where it was found)."""

    def __init__(self, problem: str, fix: str, mark: Any) -> None:
        super().__init__(problem)
        self.problem_text, self.fix, self.mark = problem, fix, mark


class StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader without anchors, aliases, merge keys or duplicate keys."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _RefusedConstruct(
                "YAML anchors and aliases (&name, *name) are not allowed",
                "write each value out in full",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:  # type: ignore[override]
        if isinstance(node, MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _RefusedConstruct(
                        "YAML merge keys (<<) are not allowed", "write the merged keys out", key_node.start_mark
                    )
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _RefusedConstruct(
                            f"key '{key}' appears twice (first at line {seen[key].line + 1})",
                            "keep exactly one of them",
                            key_node.start_mark,
                        )
                    seen[key] = key_node.start_mark
                except TypeError:
                    raise ConstructorError(None, None, "unhashable key", key_node.start_mark) from None
        return super().construct_mapping(node, deep=deep)


def load_strict_yaml(path: Path, source: str) -> Any:
    """Parse one YAML document with the strict loader; every problem is one PPMLError line."""
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise input_error(
            source, "(file)", f"{size} bytes is far too large for a policy", f"keep it under {MAX_YAML_BYTES} bytes"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise input_error(source, "(file)", "the file is not UTF-8 text", "save the policy as UTF-8") from None
    try:
        return yaml.load(text, Loader=StrictSafeLoader)  # StrictSafeLoader is a SafeLoader
    except _RefusedConstruct as exc:
        where = f" at line {exc.mark.line + 1}" if exc.mark is not None else ""
        raise input_error(source, "(document)", f"{exc.problem_text}{where}", exc.fix) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise input_error(source, "(document)", f"not valid YAML{where} ({problem})", "correct the syntax") from None
    except RecursionError:
        raise input_error(source, "(document)", "nested too deeply", "flatten the document") from None
