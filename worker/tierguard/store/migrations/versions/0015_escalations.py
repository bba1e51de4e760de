"""traffic: answers checked and escalated per reason; category.escalation_state: the escalation CUSUMs

New columns with defaults only: existing rows read as nothing checked and no escalation state.

Revision ID: 0015
Revises: 0014
"""
import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

COUNTS = ("checked", "escalated_empty", "escalated_refusal", "escalated_truncated", "escalated_invalid")


def upgrade() -> None:
    with op.batch_alter_table("traffic") as batch:
        for name in COUNTS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    with op.batch_alter_table("category") as batch:
        batch.add_column(sa.Column("escalation_state", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("category") as batch:
        batch.drop_column("escalation_state")
    with op.batch_alter_table("traffic") as batch:
        for name in reversed(COUNTS):
            batch.drop_column(name)
