"""The serving spec: how a raw record becomes the input the model was trained on, recorded with the model.

Training generalizes quasi-identifiers (and the release-safety handles) to the levels the anonymization chose,
turns ``bin`` columns into quantile-bin labels, bins numeric features as preparation decided, and one-hot encodes
the result. The spec stores exactly those decisions -- hierarchy labels at the released level (or the policy's
``hierarchy_spec`` rule), bin labels and edges, the one-hot feature names -- as a JSON artifact of the model's
training run, so the service replays them per request and never guesses. It holds hierarchy labels and bin
boundaries (already public in the release and its report), never a record.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ppml.errors import PPMLError

SPEC_ARTIFACT = "serving/preprocessing.json"
SPEC_FORMAT = 1
RELEASED_CACHE_ENTRIES = 50_000  # per column
MISSING_CATEGORY = "Unknown"  # ppml.preparation.MISSING_CATEGORY (not imported: pandas-free at request time)
_RANGE = re.compile(r"^(-?\d+)(?:-(-?\d+))?$")


def generalization_spec(config: Any, transformation: Mapping[str, int], binned: Sequence[str]) -> dict[str, dict]:
    """Per generalized column: its released level and the labels (or the spec rule) that level maps values to.

    ``config`` is the final anonymization config (release safety's, with the handles' automatic hierarchies and
    the missing-value rows); ``binned`` are the columns release safety replaced by quantile bins.
    """
    from ppml.anonymization.hierarchy import HierarchySpec

    columns: dict[str, dict] = {}
    for column, level in transformation.items():
        hierarchy = config.quasi_identifiers.get(column)
        if hierarchy is None:
            continue
        entry: dict[str, Any] = {"level": int(level), "binned": column in binned}
        if isinstance(hierarchy, HierarchySpec):
            entry["rule"] = dict(hierarchy.spec)
        else:
            entry["mapping"] = {row[0]: row[int(level)] for row in hierarchy.rows}
            entry["top"] = hierarchy.rows[0][-1]
        columns[column] = entry
    return columns


def serving_spec(
    generalization: Mapping[str, dict],
    preparation_report: Mapping[str, Any],
    feature_names: Sequence[str],
    *,
    policy_sha256: str,
    missing_value_marker: str,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole recipe from a raw (de-identified) record to the model's feature vector; ``reference`` is the
    training split's label counts per input column (ppml.serving.monitoring.input_reference), what input-drift
    monitoring compares the served inputs with."""
    decisions = preparation_report["decisions"]
    columns = [d["feature"] for d in decisions if d["decision"] != "dropped"]
    return {
        "format": SPEC_FORMAT,
        "policy_sha256": policy_sha256,
        "columns": columns,
        "generalization": {c: dict(generalization[c]) for c in columns if c in generalization},
        "bin_edges": {c: list(e) for c, e in preparation_report.get("bin_edges", {}).items() if c in columns},
        "missing_value_marker": missing_value_marker,
        "feature_names": list(feature_names),
        **({"reference": dict(reference)} if reference is not None else {}),
    }


def log_serving_spec(client: Any, run_id: str, spec: Mapping[str, Any]) -> None:
    """Store the spec with the training run that produced the model version."""
    client.log_dict(run_id, dict(spec), SPEC_ARTIFACT)


def load_serving_spec(client: Any, run_id: str, source: str) -> dict[str, Any]:
    """The spec of a training run, refused in one line when the run predates it or it is malformed."""
    try:
        with tempfile.TemporaryDirectory(prefix="ppml-spec-") as scratch:
            path = client.download_artifacts(run_id, SPEC_ARTIFACT, scratch)
            spec = json.loads(Path(path).read_text())
    except Exception:  # MLflow raises many kinds for a missing artifact
        raise PPMLError(
            f"{source}: field '{SPEC_ARTIFACT}': the training run has no serving spec (trained before ppml recorded "
            "it); fix: retrain (materialize dp_model) and promote the new version"
        ) from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT or "feature_names" not in spec:
        raise PPMLError(
            f"{source}: field '{SPEC_ARTIFACT}': not a format-{SPEC_FORMAT} serving spec; fix: retrain and promote"
        )
    return spec


class FeatureBuilder:
    """Replays a serving spec on raw records: generalize, bin, one-hot, in the model's feature order."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.columns: list[str] = list(spec["columns"])
        self.generalization: dict[str, dict] = dict(spec["generalization"])
        self.bin_edges: dict[str, list[float]] = dict(spec["bin_edges"])
        self.marker: str = spec["missing_value_marker"]
        self.index = {name: position for position, name in enumerate(spec["feature_names"])}
        self._positions: dict[str, dict[str, int]] = {}  # column -> label -> one-hot position
        for name, position in self.index.items():
            column, _, label = name.partition("=")
            self._positions.setdefault(column, {})[label] = position
        self._rules: dict[str, Any] = {}
        self._bins = {c: _bin_ranges(e["mapping"]) for c, e in self.generalization.items() if e.get("binned")}
        # the released label of each raw value seen, per column: a request's hot path is then one dict lookup per
        # column (value domains are small: ages, categories); bounded, so odd values cannot grow it without end
        self._released: dict[str, dict[Any, str]] = {column: {} for column in self.columns}

    def released_values(self, record: Mapping[str, Any]) -> dict[str, str]:
        """The record as the model's training data held it: the released label of every input column."""
        out = {}
        for column in self.columns:
            value = record.get(column)
            seen = self._released[column]
            cacheable = type(value) in (str, int)  # not bool (True == 1) and not float (1.0 == 1, other text)
            label = seen.get(value) if cacheable else None
            if label is None:
                label = self._value(column, value)
                if cacheable and len(seen) < RELEASED_CACHE_ENTRIES:
                    seen[value] = label
            out[column] = label
        return out

    def matrix(self, released: Sequence[Mapping[str, str]]) -> np.ndarray:
        """One-hot rows aligned with the model's feature names (a label training never saw sets no column)."""
        X = np.zeros((len(released), len(self.index)), dtype=np.float32)
        rows, columns = [], []
        for row, values in enumerate(released):
            for column, label in values.items():
                position = self._positions.get(column, {}).get(label)
                if position is not None:
                    rows.append(row)
                    columns.append(position)
        X[rows, columns] = 1.0
        return X

    def _value(self, column: str, value: Any) -> str:
        label = self.marker if value is None else _text(value)
        if column in self.generalization:
            label = self._generalize(column, label)
        if column in self.bin_edges and label != self.marker:  # preparation bins what the release holds
            label = _apply_bins(_number(label), self.bin_edges[column])
        return MISSING_CATEGORY if label == self.marker else label

    def _generalize(self, column: str, text: str) -> str:
        entry = self.generalization[column]
        if "rule" in entry:
            return self._by_rule(column, entry, text)
        if column in self._bins and text != self.marker:
            text = _nearest_bin(self._bins[column], text)
        mapping = entry["mapping"]
        return mapping.get(text, entry["top"])

    def _by_rule(self, column: str, entry: dict, text: str) -> str:
        from ppml.anonymization.hierarchy import HierarchySpec

        spec = self._rules.setdefault(column, HierarchySpec(entry["rule"], f"serving spec: {column}"))
        try:
            return spec.build([text], column).rows[0][entry["level"]]
        except PPMLError:  # a value the rule cannot read (e.g. not an integer) is what training suppressed to '*'
            return "*"


def _text(value: Any) -> str:
    """Values as the training data's text: integral numbers without a decimal point."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _number(text: str) -> float:
    """ppml.preparation.apply_bins reads what is not a number as 0."""
    try:
        return float(text)
    except ValueError:
        return 0.0


def _apply_bins(number: float, edges: list[float]) -> str:
    """ppml.preparation.apply_bins for one value (same labels, same right-closed intervals)."""
    if not edges:
        return "all"
    position = int(np.searchsorted(np.asarray(edges), number, side="right"))
    if position == 0:
        return f"<={edges[0]:g}"
    if position == len(edges):
        return f">{edges[-1]:g}"
    return f"({edges[position - 1]:g},{edges[position]:g}]"


def _bin_ranges(mapping: Mapping[str, str]) -> list[tuple[int, int, str]]:
    """Release-safety bin labels (``lo-hi`` or ``v``) as sorted integer ranges."""
    ranges = []
    for label in mapping:
        match = _RANGE.match(label)
        if match:
            low = int(match.group(1))
            ranges.append((low, int(match.group(2) or low), label))
    return sorted(ranges)


def _nearest_bin(ranges: list[tuple[int, int, str]], text: str) -> str:
    """The bin holding a raw integer, or the bin with the nearer boundary when it falls between two."""
    try:
        number = float(text)
    except ValueError:
        return text
    best, distance = text, float("inf")
    for low, high, label in ranges:
        gap = 0.0 if low <= number <= high else min(abs(number - low), abs(number - high))
        if gap < distance:
            best, distance = label, gap
    return best
