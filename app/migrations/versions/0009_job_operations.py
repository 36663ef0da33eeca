"""Jobs keep the continuation tokens of their long-running cloud operations.

``jobs.operations`` is a JSON object (operation key -> continuation token, e.g.
``{"apim:modelgate-apim": "…"}``): a retried or redelivered job resumes polling the operation
(GETs only) instead of starting it again. Tokens hold no credential (azure-core >= 1.38 keeps
only the operation's status URL and the first answer); finished operations are removed.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("operations", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("operations")
