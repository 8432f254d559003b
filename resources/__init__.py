"""Dagster resources: configuration read from environment variables, handed to thin asset code."""

from resources.io_manager import AssetStore, LocalFileIOManager
from resources.ppml_resources import (
    LandingZoneSource,
    LedgerResource,
    MlflowResource,
    PolicyResource,
    PseudonymizationKey,
    RecordSource,
    SqlTableSource,
    WorkspacePaths,
)

__all__ = [
    "AssetStore",
    "LandingZoneSource",
    "LedgerResource",
    "LocalFileIOManager",
    "MlflowResource",
    "PolicyResource",
    "PseudonymizationKey",
    "RecordSource",
    "SqlTableSource",
    "WorkspacePaths",
]
