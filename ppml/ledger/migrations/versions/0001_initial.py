"""Initial ledger schema: data sets, requests, runs, events.

Revision ID: 0001_initial
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ppml_ledger_datasets",
        sa.Column("dataset", sa.String(200), primary_key=True),
        sa.Column("partitions_disjoint", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "ppml_ledger_requests",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("dataset", sa.String(200), sa.ForeignKey("ppml_ledger_datasets.dataset"), nullable=False),
        sa.Column("request_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("candidates", sa.Integer, nullable=False),
        sa.Column("selected_run_id", sa.String(36)),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ppml_ledger_requests_request_key", "ppml_ledger_requests", ["request_key"])
    op.create_table(
        "ppml_ledger_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("request_id", sa.String(36), sa.ForeignKey("ppml_ledger_requests.id")),
        sa.Column("dataset", sa.String(200), sa.ForeignKey("ppml_ledger_datasets.dataset"), nullable=False),
        sa.Column("partitions", sa.Text, nullable=False),
        sa.Column("record_set_hash", sa.String(64), nullable=False),
        sa.Column("candidate_index", sa.Integer, nullable=False),
        sa.Column("config_fingerprint", sa.String(64), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("accountant", sa.String(8)),
        sa.Column("target_epsilon", sa.Float),
        sa.Column("target_delta", sa.Float),
        sa.Column("noise_multiplier", sa.Float),
        sa.Column("noise_multiplier_applied", sa.Float),
        sa.Column("sample_rate", sa.Float),
        sa.Column("planned_steps", sa.Integer, nullable=False),
        sa.Column("steps_charged", sa.Integer, nullable=False),
        sa.Column("steps_completed", sa.Integer, nullable=False),
        sa.Column("epsilon_planned", sa.Float),
        sa.Column("epsilon_charged", sa.Float),
        sa.Column("epsilon_spent", sa.Float),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("owner", sa.String(300)),
        sa.Column("heartbeat_unix", sa.Float),
        sa.Column("message", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_ppml_ledger_runs_dataset", "ppml_ledger_runs", ["dataset"])
    op.create_table(
        "ppml_ledger_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36)),
        sa.Column("dataset", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("steps", sa.Integer),
        sa.Column("epsilon", sa.Float),
        sa.Column("dagster_run_id", sa.String(64)),
        sa.Column("detail", sa.Text),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_ppml_ledger_events_run_id", "ppml_ledger_events", ["run_id"])


def downgrade() -> None:
    op.drop_table("ppml_ledger_events")
    op.drop_table("ppml_ledger_runs")
    op.drop_table("ppml_ledger_requests")
    op.drop_table("ppml_ledger_datasets")
