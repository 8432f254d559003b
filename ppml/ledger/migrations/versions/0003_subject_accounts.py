"""Per-subject accounting: cohorts of subjects sharing a run history, the subjects' cohorts, the filter order.

Existing runs keep ``privacy_unit`` NULL (record-level runs: they count, converted to a group of records, for
every subject of the data set -- docs/training.md); existing data sets have no filter order until their first
subject-unit reservation fixes it.

Revision ID: 0003_subject_accounts
Revises: 0002_dataset_identity
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_subject_accounts"
down_revision = "0002_dataset_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ppml_ledger_datasets", sa.Column("filter_order", sa.Float))
    op.add_column("ppml_ledger_runs", sa.Column("privacy_unit", sa.String(16)))
    op.create_table(
        "ppml_ledger_subject_cohorts",
        sa.Column("dataset", sa.String(200), sa.ForeignKey("ppml_ledger_datasets.dataset"), primary_key=True),
        sa.Column("cohort", sa.String(64), primary_key=True),
        sa.Column("runs", sa.Text, nullable=False),
        sa.Column("subjects", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ppml_ledger_subjects",
        sa.Column("dataset", sa.String(200), sa.ForeignKey("ppml_ledger_datasets.dataset"), primary_key=True),
        sa.Column("subject", sa.String(64), primary_key=True),
        sa.Column("cohort", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ppml_ledger_subjects_cohort", "ppml_ledger_subjects", ["dataset", "cohort"])


def downgrade() -> None:
    op.drop_index("ix_ppml_ledger_subjects_cohort", "ppml_ledger_subjects")
    op.drop_table("ppml_ledger_subjects")
    op.drop_table("ppml_ledger_subject_cohorts")
    with op.batch_alter_table("ppml_ledger_runs") as batch:
        batch.drop_column("privacy_unit")
    with op.batch_alter_table("ppml_ledger_datasets") as batch:
        batch.drop_column("filter_order")
