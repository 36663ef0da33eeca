"""Promotion kinds: a model version (deploy) or an API revision (publish a policy).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False,
                                   server_default="model"))
        batch.add_column(sa.Column("policy_xml", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("promotions") as batch:
        batch.drop_column("policy_xml")
        batch.drop_column("kind")
