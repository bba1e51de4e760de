"""traffic: the escalated calls, their tokens and price, so their spend shows apart

New columns with defaults only: existing rows read as no escalated call.

Revision ID: 0016
Revises: 0015
"""
import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

COUNTS = ("escalated_calls", "escalated_input_tokens", "escalated_output_tokens",
          "escalated_cache_write_tokens", "escalated_cache_read_tokens")


def upgrade() -> None:
    with op.batch_alter_table("traffic") as batch:
        for name in COUNTS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("escalated_cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("traffic") as batch:
        batch.drop_column("escalated_cost_usd")
        for name in reversed(COUNTS):
            batch.drop_column(name)
