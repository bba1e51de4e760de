"""Alembic environment: runs on the engine tierguard passes in."""

from alembic import context
from sqlmodel import SQLModel

import tierguard.store.tables  # noqa: F401  (registers every table)
from tierguard.store.partitions import include_name

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=SQLModel.metadata,
                      render_as_batch=connection.dialect.name == "sqlite",
                      include_name=include_name)
    with context.begin_transaction():
        context.run_migrations()
