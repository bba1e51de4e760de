"""category: the adaptive sample rate beat last chose, and its reason (for the dashboard)

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("category") as batch:
        batch.add_column(sa.Column("chosen_rate", sa.Float(), nullable=True))
        batch.add_column(sa.Column("chosen_rate_reason", sqlmodel.sql.sqltypes.AutoString(),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("category") as batch:
        batch.drop_column("chosen_rate_reason")
        batch.drop_column("chosen_rate")
