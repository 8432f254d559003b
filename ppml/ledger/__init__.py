"""Lifetime privacy-budget ledger (issue 4, item 3). See docs/training.md for the composition rule."""

from ppml.ledger.composition import Charge, Composition, compose
from ppml.ledger.records import (
    DEFAULT_STALE_AFTER_S,
    BudgetExceededError,
    BudgetStatus,
    DataScope,
    LedgerRun,
    LifetimeBudget,
    PlannedRun,
    Reservation,
)
from ppml.ledger.store import PrivacyLedger

__all__ = [
    "DEFAULT_STALE_AFTER_S",
    "BudgetExceededError",
    "BudgetStatus",
    "Charge",
    "Composition",
    "DataScope",
    "LedgerRun",
    "LifetimeBudget",
    "PlannedRun",
    "PrivacyLedger",
    "Reservation",
    "compose",
]
