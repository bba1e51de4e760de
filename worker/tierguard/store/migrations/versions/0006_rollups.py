"""rollup, rollup_error: per-1m/5m/1h aggregates the dashboards read (backfilled); drill-down index

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LATENCY_BUCKETS = 24
SUMS_INT = ("samples", "agreements", "disagreements", "errors", "skipped", "primary_input_tokens",
            "primary_output_tokens", "shadow_input_tokens", "shadow_output_tokens")
SUMS_FLOAT = ("primary_cost_usd", "shadow_cost_usd", "judge_cost_usd")


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "rollup",
        sa.Column("grain", text(), nullable=False),
        sa.Column("category", text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("served_model", text(), nullable=False),
        sa.Column("shadow_model", text(), nullable=False),
        sa.Column("kind", text(), nullable=False),
        *[sa.Column(c, sa.Integer(), nullable=False, server_default="0") for c in SUMS_INT],
        *[sa.Column(c, sa.Float(), nullable=False, server_default="0") for c in SUMS_FLOAT],
        *[sa.Column(f"{side}_lat_{b:02d}", sa.Integer(), nullable=False, server_default="0")
          for side in ("primary", "shadow") for b in range(LATENCY_BUCKETS)],
        sa.PrimaryKeyConstraint("grain", "category", "at", "served_model", "shadow_model", "kind"),
    )
    op.create_index("ix_rollup_grain_at", "rollup", ["grain", "at"])
    op.create_table(
        "rollup_error",
        sa.Column("grain", text(), nullable=False),
        sa.Column("category", text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("grain", "category", "at", "error"),
    )
    op.create_index("ix_rollup_error_grain_at", "rollup_error", ["grain", "at"])
    op.create_index("ix_sample_disagreements", "sample", ["created_at"],
                    postgresql_where=sa.text("agree = false AND kind = 'shadow'"),
                    sqlite_where=sa.text("agree = 0 AND kind = 'shadow'"))
    # Existing samples get their rollups now: the dashboards read nothing else.
    from sqlmodel import Session

    from tierguard.store.rollups import rebuild

    bind = op.get_bind()
    with Session(bind=bind) as s:
        rebuild(s)
        s.flush()


def downgrade() -> None:
    op.drop_index("ix_sample_disagreements", "sample")
    op.drop_table("rollup_error")
    op.drop_table("rollup")
