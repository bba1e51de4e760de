"""headroom: the rate-limit views per minute, model and key, for the dashboard

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "headroom",
        sa.Column("minute", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), primary_key=True),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(), primary_key=True),
        *[sa.Column(c, sa.Float(), nullable=True)
          for c in ("requests", "input_tokens", "output_tokens", "tokens")],
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("deferred", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("headroom")
