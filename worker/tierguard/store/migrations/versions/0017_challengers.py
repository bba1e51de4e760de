"""challenge, challenger_state: models challenged by operators, and each challenger's evidence per category

New tables only; nothing existing changes.

Revision ID: 0017
Revises: 0016
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def _text(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(), **kw)


def upgrade() -> None:
    op.create_table(
        "challenge",
        _text("model", primary_key=True),
        sa.Column("categories", sa.JSON(), nullable=True),
        sa.Column("rate", sa.Float(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        _text("started_by", nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "challenger_state",
        _text("category", primary_key=True), _text("model", primary_key=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("challenger_state")
    op.drop_table("challenge")
