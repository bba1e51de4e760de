"""challenge, challenger_state, rollout: challengers, their evidence per category, staged rollouts

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
    op.create_table(
        "rollout",
        _text("category", primary_key=True), _text("model", nullable=False), _text("base", nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("step_minutes", sa.Float(), nullable=False),
        sa.Column("step_samples", sa.Integer(), nullable=False),
        sa.Column("step_started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        _text("status", nullable=False), _text("reason", nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        _text("started_by", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rollout")
    op.drop_table("challenger_state")
    op.drop_table("challenge")
