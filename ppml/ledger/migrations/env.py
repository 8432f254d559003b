"""Alembic environment for the ledger: runs on the connection PrivacyLedger.migrate() passes in."""

from __future__ import annotations

from alembic import context

from ppml.ledger.schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
