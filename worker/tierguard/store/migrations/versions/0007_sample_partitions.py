"""sample: requested_at always set; on PostgreSQL range-partitioned by day of requested_at

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        from tierguard.store.partitions import convert

        convert(bind)
        return
    op.execute("UPDATE sample SET requested_at = created_at WHERE requested_at IS NULL")
    with op.batch_alter_table("sample") as batch:
        batch.alter_column("requested_at", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        from tierguard.store.partitions import unconvert

        unconvert(bind)
        return
    with op.batch_alter_table("sample") as batch:
        batch.alter_column("requested_at", existing_type=sa.DateTime(timezone=True), nullable=True)
