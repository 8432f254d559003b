"""Ledger tables (SQLAlchemy Core). Every name starts with ``ppml_ledger_`` so the ledger can share the Dagster
instance's database (PostgreSQL in production) without colliding with Dagster's own tables; Alembic's version
table is ``ppml_ledger_alembic_version`` for the same reason (Dagster uses ``alembic_version``)."""

from __future__ import annotations

import sqlalchemy as sa

PREFIX = "ppml_ledger_"
VERSION_TABLE = f"{PREFIX}alembic_version"

metadata = sa.MetaData()

#: One row per data set: the row every budget decision locks, so decisions on one data set are serialised.
#: ``scope_kind`` says what ``dataset`` is: a policy's data-set identity (``dataset_id``), or -- rows written
#: before revision 0002 -- a policy name (``policy_name``), which the first use of that policy merges into its
#: data-set identity (``merged_into``).
datasets = sa.Table(
    f"{PREFIX}datasets",
    metadata,
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("partitions_disjoint", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("scope_kind", sa.String(24)),
    sa.Column("merged_into", sa.String(200)),
    sa.Column("filter_order", sa.Float),  # 0003: the Renyi order of the per-subject privacy filter, fixed once
    sa.Column("filter_delta", sa.Float),  # 0004: the filter's lifetime delta, fixed once (never grows)
)

#: A training request: the candidates trained for one model selection (each candidate is a run).
requests = sa.Table(
    f"{PREFIX}requests",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("dataset", sa.String(200), sa.ForeignKey(f"{PREFIX}datasets.dataset"), nullable=False),
    sa.Column("request_key", sa.String(64), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("candidates", sa.Integer, nullable=False),
    sa.Column("selected_run_id", sa.String(36)),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Column("dagster_run_id", sa.String(64)),
    sa.Column("message", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

#: Every training run, private or not, with what it may have spent (charged) and what it did spend.
runs = sa.Table(
    f"{PREFIX}runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("request_id", sa.String(36), sa.ForeignKey(f"{PREFIX}requests.id")),
    sa.Column("dataset", sa.String(200), sa.ForeignKey(f"{PREFIX}datasets.dataset"), nullable=False, index=True),
    sa.Column("partitions", sa.Text, nullable=False),  # JSON list of partition keys; [] = the whole data set
    sa.Column("record_set_hash", sa.String(64), nullable=False),
    sa.Column("candidate_index", sa.Integer, nullable=False),
    sa.Column("config_fingerprint", sa.String(64), nullable=False),
    sa.Column("config", sa.Text, nullable=False),  # JSON of aggregate hyper-parameters only
    sa.Column("kind", sa.String(16), nullable=False),  # "dp" or "non_private"
    sa.Column("status", sa.String(16), nullable=False),  # running, completed, failed, abandoned, refused
    sa.Column("accountant", sa.String(8)),
    sa.Column("target_epsilon", sa.Float),
    sa.Column("target_delta", sa.Float),
    sa.Column("noise_multiplier", sa.Float),  # calibrated
    sa.Column("noise_multiplier_applied", sa.Float),  # what was added (differs only under fault injection)
    sa.Column("sample_rate", sa.Float),
    sa.Column("planned_steps", sa.Integer, nullable=False),
    sa.Column("steps_charged", sa.Integer, nullable=False),  # pre-charged: steps that may have run
    sa.Column("steps_completed", sa.Integer, nullable=False),  # steps known to have finished (checkpointed)
    sa.Column("epsilon_planned", sa.Float),
    sa.Column("epsilon_charged", sa.Float),
    sa.Column("epsilon_spent", sa.Float),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Column("dagster_run_id", sa.String(64)),
    sa.Column("owner", sa.String(300)),  # host:pid:process-start of the process training it
    sa.Column("heartbeat_unix", sa.Float),
    sa.Column("message", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("privacy_unit", sa.String(16)),  # 0003: "subject" for user-level runs; NULL = record
)

#: Append-only audit trail: reservations, pre-charges, progress, completion, refusals, take-overs.
events = sa.Table(
    f"{PREFIX}events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), index=True),
    sa.Column("dataset", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(24), nullable=False),
    sa.Column("steps", sa.Integer),
    sa.Column("epsilon", sa.Float),
    sa.Column("dagster_run_id", sa.String(64)),
    sa.Column("detail", sa.Text),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
)

#: 0003. A cohort: the subjects that share one history of subject-unit runs (every run that could have included
#: them). ``cohort`` is the hash of its history when it was created (stable while the history grows, see
#: ppml.ledger.subject_moves), ``runs`` the JSON list of its run ids; storage grows with the number of distinct
#: histories, not with runs x subjects.
subject_cohorts = sa.Table(
    f"{PREFIX}subject_cohorts",
    metadata,
    sa.Column("dataset", sa.String(200), sa.ForeignKey(f"{PREFIX}datasets.dataset"), primary_key=True),
    sa.Column("cohort", sa.String(64), primary_key=True),
    sa.Column("runs", sa.Text, nullable=False),
    sa.Column("subjects", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

#: 0003. One row per data subject ever considered by a subject-unit run: the SHA-256 of (data set, pseudonym) --
#: never the subject id or the pseudonym itself -- and the cohort it is in now.
subjects = sa.Table(
    f"{PREFIX}subjects",
    metadata,
    sa.Column("dataset", sa.String(200), sa.ForeignKey(f"{PREFIX}datasets.dataset"), primary_key=True),
    sa.Column("subject", sa.String(64), primary_key=True),
    sa.Column("cohort", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(f"ix_{PREFIX}subjects_cohort", "dataset", "cohort"),
)
