"""Promotion requests (four-eyes approval of a model version for an environment).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

from app.db import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "promotions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("decided_by", sa.String(200), nullable=True),
        sa.Column("decided_at", UtcDateTime(), nullable=True),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("deploy_job_id", sa.String(32), nullable=True),
        sa.Column("superseded_by", sa.String(32), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_promotions_environment", "promotions", ["environment"])
    op.create_index("ix_promotions_state", "promotions", ["state"])
    op.create_index("ix_promotions_requested_by", "promotions", ["requested_by"])
    op.create_index("ix_promotions_requested_at", "promotions", ["requested_at"])


def downgrade() -> None:
    op.drop_table("promotions")
