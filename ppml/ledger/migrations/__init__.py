"""Alembic migrations of the privacy ledger, shipped inside the package so an installed ppml can upgrade its own
tables (``PrivacyLedger.migrate()``); there is no alembic.ini -- the configuration is built in code."""
