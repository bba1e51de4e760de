"""decision engine: pin expiry, observe-mode changes, noise-floor samples

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("category") as batch:
        batch.add_column(sa.Column("pinned_until", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("route_change") as batch:
        batch.add_column(sa.Column("applied", sa.Boolean(), nullable=False, server_default=sa.true()))
    with op.batch_alter_table("sample") as batch:
        batch.add_column(sa.Column("kind", sa.String(), nullable=False, server_default="shadow"))
        batch.create_index("ix_sample_category_created_at", ["category", "created_at"])


def downgrade() -> None:
    with op.batch_alter_table("sample") as batch:
        batch.drop_index("ix_sample_category_created_at")
        batch.drop_column("kind")
    with op.batch_alter_table("route_change") as batch:
        batch.drop_column("applied")
    with op.batch_alter_table("category") as batch:
        batch.drop_column("pinned_until")
