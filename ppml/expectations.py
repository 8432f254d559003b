"""Great Expectations 1.x suites that guard collection, anonymization and cleaning.

The suites are built from the policy, so the same YAML that states the requirements also states what the data
must look like. GX runs in an ephemeral context on an in-memory pandas frame: nothing is written to disk and
no analytics leave the machine. Only counts and expectation names are returned — GX's sample of unexpected
values would carry personal data and is deliberately dropped.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ppml.policy import Policy

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines announce temp folders

EQUIVALENCE_CLASS_SIZE = "__equivalence_class_size"
DISTINCT_SENSITIVE_PREFIX = "__distinct_"


@dataclass
class SuiteOutcome:
    """The result of one suite: overall success and one aggregate line per expectation."""

    suite: str
    success: bool
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [result for result in self.results if not result["success"]]

    def summary(self) -> str:
        if self.success:
            return f"{self.suite}: all {len(self.results)} expectations met"
        names = ", ".join(f"{r['expectation']}({r.get('column') or ''})" for r in self.failures)
        return f"{self.suite}: {len(self.failures)} of {len(self.results)} expectations failed: {names}"


def _run_suite(name: str, frame: pd.DataFrame, expectations: list[Any]) -> SuiteOutcome:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("ppml").add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for expectation in expectations:
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
    outcome = validation.run(batch_parameters={"dataframe": frame})
    results = []
    for result in outcome.results:
        config = result.expectation_config
        entry: dict[str, Any] = {
            "expectation": config.type,
            "column": config.kwargs.get("column"),
            "success": bool(result.success),
        }
        rule = describe_rule(config.kwargs)
        if rule:
            entry["rule"] = rule
        for key in ("element_count", "unexpected_count", "missing_count"):
            if key in result.result:
                entry[key] = int(result.result[key] or 0)
        observed = result.result.get("observed_value")
        if isinstance(observed, (int, float)) and not isinstance(observed, bool):
            entry["observed_value"] = observed
        results.append(entry)
    results.sort(key=lambda r: (r["expectation"], str(r["column"])))
    return SuiteOutcome(suite=name, success=bool(outcome.success), results=results)


def describe_rule(kwargs: Any) -> str:
    """An expectation's arguments other than its column, shortly (they come from the policy, not the data)."""
    parts = []
    for key, value in dict(kwargs).items():
        if key in ("column", "batch_id", "result_format", "catch_exceptions", "meta") or value is None:
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list | tuple | set) else str(value)
        parts.append(f"{key.rstrip('_')}={text if len(text) <= 60 else text[:57] + '...'}")
    return "; ".join(parts)


def raw_records_suite(policy: Policy, frame: pd.DataFrame) -> SuiteOutcome:
    """Schema, types, not-null and ranges of collected records."""
    import great_expectations as gx

    from ppml.collection import required_columns

    roles = policy.schema_
    required = required_columns(policy)
    checked = frame.replace("", None)
    expectations: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=required, exact_match=False),
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    kept_missing = set(roles.missing_category_columns())  # numeric_missing: category keeps empty cells missing
    for column in required:
        if column not in kept_missing:
            expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
    for column in roles.numeric_columns:
        if column in required:  # numeric columns the policy does not use are not collected at all
            # GX reads a nullable Int64 column (numeric_missing: category) as int64 too, its <NA> cells skipped
            expectations.append(gx.expectations.ExpectColumnValuesToBeOfType(column=column, type_="int64"))
    for column, (low, high) in roles.value_ranges.items():
        if column not in required:
            continue
        expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high))
    if roles.label_values:
        expectations.append(
            gx.expectations.ExpectColumnValuesToBeInSet(column=roles.label.column, value_set=roles.label_values)
        )
    expectations.append(
        gx.expectations.ExpectColumnValuesToMatchRegex(column=roles.event_date, regex=r"^\d{4}-\d{2}-\d{2}$")
    )
    return _run_suite("raw_records", checked, expectations)


def anonymized_records_suite(
    policy: Policy, frame: pd.DataFrame, released_columns: list[str], input_rows: int
) -> SuiteOutcome:
    """No direct identifier column, every equivalence class >= k, l-diversity per class, suppression <= limit.

    The release must have exactly the expected columns, so an identifier column that slipped through fails the
    schema expectation. Per-class statistics are added to a validation view (never to the stored data).
    """
    import great_expectations as gx

    privacy = policy.privacy
    qis = [column for column in policy.schema_.quasi_identifiers if column in frame.columns]
    view = frame.copy()
    derived: list[tuple[str, float]] = []
    if qis:
        grouped = view.groupby(qis, dropna=False, sort=False)
        view[EQUIVALENCE_CLASS_SIZE] = grouped[qis[0]].transform("size")
        for model in privacy.l_diversity:
            if model.variant == "distinct" and model.attribute in view.columns:
                column = f"{DISTINCT_SENSITIVE_PREFIX}{model.attribute}"
                view[column] = grouped[model.attribute].transform("nunique")
                derived.append((column, model.l))
    else:
        view[EQUIVALENCE_CLASS_SIZE] = len(view)
    derived.insert(0, (EQUIVALENCE_CLASS_SIZE, privacy.k))
    expectations: list[Any] = [
        gx.expectations.ExpectTableColumnsToMatchSet(
            column_set=[*released_columns, *(name for name, _ in derived)], exact_match=True
        ),
        gx.expectations.ExpectTableRowCountToBeBetween(
            min_value=max(1, math.ceil(input_rows * (1 - privacy.suppression_limit) - 1e-9)),
            max_value=input_rows,
        ),
    ]
    for column, minimum in derived:
        expectations.append(gx.expectations.ExpectColumnValuesToBeBetween(column=column, min_value=minimum))
    return _run_suite("anonymized_records", view, expectations)


def cleaned_records_suite(
    frame: pd.DataFrame, expected_columns: list[str], label_column: str, split_column: str, n_classes: int = 2
) -> SuiteOutcome:
    """Cleaned training records: exactly the expected columns (no identifier), no nulls, the label a class index
    (0/1 for a binary label, 0..K-1 for K classes)."""
    import great_expectations as gx

    expectations: list[Any] = [
        gx.expectations.ExpectTableRowCountToBeBetween(min_value=1),
        gx.expectations.ExpectTableColumnsToMatchSet(column_set=expected_columns, exact_match=True),
    ]
    for column in frame.columns:
        expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
    expectations.append(
        gx.expectations.ExpectColumnValuesToBeInSet(column=label_column, value_set=list(range(n_classes)))
    )
    expectations.append(
        gx.expectations.ExpectColumnValuesToBeInSet(column=split_column, value_set=["train", "validation", "test"])
    )
    return _run_suite("cleaned_records", frame, expectations)
