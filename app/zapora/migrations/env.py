"""Alembic environment: raw SQL migrations over a psycopg 3 connection (no ORM models)."""

from __future__ import annotations

import psycopg
from alembic import context
from sqlalchemy import create_engine, pool

dsn = context.config.get_main_option("zapora.dsn")
if not dsn:
    raise RuntimeError("zapora.dsn is not set; run migrations with `zapora migrate`")

# `creator` hands libpq the DSN untouched, so multi-host strings and passfiles work as in
# the application.
engine = create_engine(
    "postgresql+psycopg://", creator=lambda: psycopg.connect(dsn), poolclass=pool.NullPool
)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
