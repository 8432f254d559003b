"""The per-subject filter's lifetime delta, fixed once like its order.

``delta: auto`` follows the number of people, so the delta a run passes changes from week to week; the filter's
Renyi budget ``B = epsilon - conv(alpha, delta)`` must not grow with it (the individual filter's theorem needs B
fixed in advance). The filter keeps the delta of its first reservation and checks every later one at the smaller
of that and the run's (docs/training.md). A data set migrated from 0003 fixes it at its next reservation.

Revision ID: 0004_filter_delta
Revises: 0003_subject_accounts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_filter_delta"
down_revision = "0003_subject_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ppml_ledger_datasets", sa.Column("filter_delta", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("ppml_ledger_datasets") as batch:
        batch.drop_column("filter_delta")
