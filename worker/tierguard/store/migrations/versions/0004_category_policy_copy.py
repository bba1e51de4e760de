"""category: threshold and sample rate copied from the policy (dashboards, alert rules)

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("category") as batch:
        batch.add_column(sa.Column("threshold", sa.Float(), nullable=True))
        batch.add_column(sa.Column("sample_rate", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("category") as batch:
        batch.drop_column("sample_rate")
        batch.drop_column("threshold")
