"""Alembic environment for embedkit. `embedkit.store.migrate` runs it with a live connection."""

from alembic import context

from embedkit.store.models import Base

target_metadata = Base.metadata
connection = context.config.attributes.get("connection")

if connection is None:
    raise RuntimeError("run migrations through `embedkit db upgrade` (embedkit.store.migrate.upgrade)")

context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
