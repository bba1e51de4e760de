"""sample: the judge's model, tokens and cost; traffic: production calls per category and minute

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sample") as batch:
        batch.add_column(sa.Column("judge_model", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch.add_column(sa.Column("judge_input_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("judge_output_tokens", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("judge_cost_usd", sa.Float(), nullable=True))
    op.create_table(
        "traffic",
        sa.Column("category", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("guarded", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("category", "minute", "model"),
    )


def downgrade() -> None:
    op.drop_table("traffic")
    with op.batch_alter_table("sample") as batch:
        batch.drop_column("judge_cost_usd")
        batch.drop_column("judge_output_tokens")
        batch.drop_column("judge_input_tokens")
        batch.drop_column("judge_model")
