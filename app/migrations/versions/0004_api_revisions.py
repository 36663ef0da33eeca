"""API revisions published to the gateway.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

from app.db import UtcDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_revisions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("api_name", sa.String(100), nullable=False),
        sa.Column("path", sa.String(200), nullable=False),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("policy_xml", sa.Text, nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("is_current", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("job_id", sa.String(32), nullable=True, unique=True),
    )
    op.create_index("ix_api_revisions_api_name", "api_revisions", ["api_name"])
    op.create_index("ix_api_revisions_environment", "api_revisions", ["environment"])
    op.create_index("ix_api_revisions_api_revision", "api_revisions", ["api_name", "revision"],
                    unique=True)


def downgrade() -> None:
    op.drop_table("api_revisions")
