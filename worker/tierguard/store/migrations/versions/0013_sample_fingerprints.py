"""sample.prompt_fingerprint, served_snapshot, shadow_snapshot: what a sample's evidence was gathered on

Nullable columns only: every existing sample is kept as it is (its fingerprint and snapshots
unknown, null), and no row of a large table is rewritten.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

COLUMNS = ("prompt_fingerprint", "served_snapshot", "shadow_snapshot")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("sample", sa.Column(name, sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sample") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
