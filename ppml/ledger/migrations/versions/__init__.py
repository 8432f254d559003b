"""Ledger schema revisions (Alembic ignores this file)."""
