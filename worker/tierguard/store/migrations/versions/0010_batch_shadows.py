"""batch shadows: jobs waiting for a Message Batch, the batches sent, and sample.shadow_via

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_str = sqlmodel.sql.sqltypes.AutoString


def upgrade() -> None:
    op.create_table(
        "shadow_batch",
        sa.Column("id", _str(), primary_key=True),
        sa.Column("category", _str(), nullable=False, index=True),
        sa.Column("status", _str(), nullable=False, index=True),
        sa.Column("api_id", _str(), nullable=True),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("request_counts", sa.JSON(), nullable=False),
        sa.Column("error", _str(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "batch_job",
        sa.Column("job_id", _str(), primary_key=True),
        sa.Column("category", _str(), nullable=False, index=True),
        sa.Column("batch_id", _str(), nullable=True, index=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )
    op.add_column("sample", sa.Column("shadow_via", _str(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sample") as batch:
        batch.drop_column("shadow_via")
    op.drop_table("batch_job")
    op.drop_table("shadow_batch")
