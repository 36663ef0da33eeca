"""Drift: model versions' training baselines and the results of drift checks.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-20
"""
import sqlalchemy as sa
from alembic import op

from app.db import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drift_baselines",
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("model_version", sa.String(32), primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("baseline", sa.JSON, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "drift_checks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("environment", sa.String(64), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
        sa.Column("checked_at", UtcDateTime(), nullable=False),
        sa.Column("first_hour", sa.String(20), nullable=False),
        sa.Column("last_hour", sa.String(20), nullable=False),
        sa.Column("samples", sa.Integer, nullable=False),
        sa.Column("band", sa.String(8), nullable=False),
        sa.Column("score_psi", sa.Float, nullable=False),
        sa.Column("score_band", sa.String(8), nullable=False),
        sa.Column("fields", sa.JSON, nullable=False),
        sa.Column("score", sa.JSON, nullable=False),
        sa.Column("crossed", sa.JSON, nullable=False),
    )
    op.create_index("ix_drift_checks_environment_checked", "drift_checks",
                    ["environment", "checked_at"])


def downgrade() -> None:
    op.drop_table("drift_checks")
    op.drop_table("drift_baselines")
