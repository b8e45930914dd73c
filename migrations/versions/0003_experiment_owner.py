"""experiments.owner: which API key submitted an experiment, for MAX_QUEUED

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 06:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=16), nullable=True))
        batch.create_index("ix_experiments_owner_status", ["owner", "status"])


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_index("ix_experiments_owner_status")
        batch.drop_column("owner")
