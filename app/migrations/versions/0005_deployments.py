"""Deployments: blue/green slots per environment, desired state, encrypted keys.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

from app.db import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("slot", sa.String(8), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("replicas", sa.Integer, nullable=False),
        sa.Column("resources", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("port", sa.Integer, nullable=True),
        sa.Column("traffic", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True, unique=True),
        sa.Column("primary_key_enc", sa.Text, nullable=False),
        sa.Column("secondary_key_enc", sa.Text, nullable=False),
        sa.Column("keys_rotated_at", UtcDateTime(), nullable=False),
        sa.Column("rotation_job_id", sa.String(32), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("activated_at", UtcDateTime(), nullable=True),
        sa.Column("stopped_at", UtcDateTime(), nullable=True),
    )
    op.create_index("ix_deployments_environment", "deployments", ["environment"])
    op.create_index("ix_deployments_state", "deployments", ["state"])


def downgrade() -> None:
    op.drop_table("deployments")
