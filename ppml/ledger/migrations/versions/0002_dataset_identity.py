"""Ledger scopes keyed by the policy's data-set identity: mark the old policy-name scopes for merging.

Before this revision a ledger scope was the policy's ``name``; now it is ``policy.dataset.id``. Existing rows are
marked ``scope_kind = 'policy_name'``; the first time a policy with that name uses the ledger, its runs, requests
and events move into the policy's data-set identity (``PrivacyLedger.adopt_policy_name_scope``), so the people's
spending history is kept -- never restarted at zero.

Revision ID: 0002_dataset_identity
Revises: 0001_initial
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_dataset_identity"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ppml_ledger_datasets", sa.Column("scope_kind", sa.String(24)))
    op.add_column("ppml_ledger_datasets", sa.Column("merged_into", sa.String(200)))
    op.execute("UPDATE ppml_ledger_datasets SET scope_kind = 'policy_name' WHERE scope_kind IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("ppml_ledger_datasets") as batch:
        batch.drop_column("merged_into")
        batch.drop_column("scope_kind")
