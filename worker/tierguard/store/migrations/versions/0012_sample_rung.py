"""sample.rung: the model a sample compares with the reference (ladders)

Existing rows keep their meaning without a rewrite: a sample whose rung is null
compared the category's candidate with its reference (readers derive it from
``served_model``/``shadow_model``), so no row of a large table is touched.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sample", sa.Column("rung", sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sample") as batch:
        batch.drop_column("rung")
