"""The adapter between a training loop's spend reports and one reserved ledger run.

`train_dp` reports before each segment of steps (the ledger pre-charges, so a crash never under-counts) and after
it (the ledger records the progress); every caller that trains through a reservation uses this one adapter.
"""

from __future__ import annotations

from ppml.ledger.store import PrivacyLedger


class LedgerSpendSink:
    """Pre-charge before steps, record progress after, for one reserved run."""

    def __init__(self, ledger: PrivacyLedger, run_id: str) -> None:
        self.ledger, self.run_id = ledger, run_id

    def before_steps(self, *, steps: int, epsilon: float) -> None:
        self.ledger.pre_charge(self.run_id, steps=steps, epsilon=epsilon)

    def after_steps(self, *, steps: int, epsilon: float) -> None:
        self.ledger.record_progress(self.run_id, steps=steps, epsilon=epsilon)
