"""sentinel_baseline, sentinel_run: known answers' accuracy per rung and snapshot, and each rung's last run

New tables only; nothing existing changes.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _text(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(), **kw)


def upgrade() -> None:
    op.create_table(
        "sentinel_baseline",
        _text("category", primary_key=True), _text("model", primary_key=True),
        _text("snapshot", primary_key=True), _text("cases_hash", primary_key=True),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "sentinel_run",
        _text("category", primary_key=True), _text("model", primary_key=True),
        _text("run", nullable=False), _text("snapshot", nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("baseline", sa.Float(), nullable=True),
        _text("baseline_snapshot", nullable=True),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("compared", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sentinel_run")
    op.drop_table("sentinel_baseline")
