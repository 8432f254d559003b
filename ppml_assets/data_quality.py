"""Thin Dagster layer: a GX check's result rendered as a readable page (ppml.data_quality_page), linked from
the check's metadata (a path and a file URL) and, through the run's check evaluations, from the report."""

from typing import Any

from dagster import AssetCheckExecutionContext, MetadataValue

from ppml.data_quality_page import write_data_quality_page
from ppml.expectations import SuiteOutcome
from resources import WorkspacePaths

PAGE_KEY = "data_quality_page"


def partition_label(context: AssetCheckExecutionContext) -> str:
    """The checked partition, or ``first..last`` for a backfill range in one run."""
    if context.has_partition_key_range:
        keys = context.partition_key_range
        return keys.start if keys.start == keys.end else f"{keys.start}..{keys.end}"
    return context.partition_key if context.has_partition_key else "latest"


def data_quality_page_metadata(
    context: AssetCheckExecutionContext, outcome: SuiteOutcome, asset: str, paths: WorkspacePaths
) -> dict[str, Any]:
    page = write_data_quality_page(outcome, asset, partition_label(context), paths.reports_dir)
    return {PAGE_KEY: MetadataValue.path(str(page)), f"{PAGE_KEY}_url": MetadataValue.url(page.as_uri())}
