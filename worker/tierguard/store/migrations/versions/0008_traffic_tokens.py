"""traffic: the production calls' tokens (input, output, cache writes and reads) and their price

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TOKENS = ("input_tokens", "output_tokens", "cache_write_tokens", "cache_read_tokens")


def upgrade() -> None:
    with op.batch_alter_table("traffic") as batch:
        for name in TOKENS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))
        batch.add_column(sa.Column("reference_cost_usd", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("traffic") as batch:
        batch.drop_column("reference_cost_usd")
        batch.drop_column("cost_usd")
        for name in reversed(TOKENS):
            batch.drop_column(name)
