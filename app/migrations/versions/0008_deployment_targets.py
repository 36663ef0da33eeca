"""Deployments describe any backend: backend name, endpoint, scoring URI; keys leave the row.

Existing rows are local slots: backend ``local``, the endpoint is the environment, and the
scoring URI is the loopback port the runtime chose. Their encrypted keys stay readable (the
local backend falls back to them); new rows leave the key columns empty.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("backend", sa.String(32), nullable=False,
                                   server_default="local"))
        batch.add_column(sa.Column("endpoint", sa.String(128), nullable=True))
        batch.add_column(sa.Column("scoring_uri", sa.String(512), nullable=True))
        batch.alter_column("primary_key_enc", existing_type=sa.Text, nullable=True)
        batch.alter_column("secondary_key_enc", existing_type=sa.Text, nullable=True)
    op.execute("UPDATE deployments SET endpoint = environment WHERE endpoint IS NULL")
    op.execute("UPDATE deployments SET scoring_uri = 'http://127.0.0.1:' || port || '/score' "
               "WHERE port IS NOT NULL AND scoring_uri IS NULL")


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("scoring_uri")
        batch.drop_column("endpoint")
        batch.drop_column("backend")

