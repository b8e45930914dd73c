"""studies; experiments' study cell, reproducibility record, misclassified images; `pruned`

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 19:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
NEW_STATUSES = (*OLD_STATUSES, "pruned")


def _status_type(statuses: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(
        *statuses, name="experiment_status", native_enum=False, create_constraint=True, length=16
    )


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("owner", sa.String(length=16), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("varied", sa.JSON(), nullable=False),
        sa.Column("prune", sa.JSON(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=240), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_studies_idempotency_key")),
    )
    with op.batch_alter_table("experiments") as batch:
        batch.alter_column(
            "status",
            existing_type=_status_type(OLD_STATUSES),
            type_=_status_type(NEW_STATUSES),
            existing_nullable=False,
        )
        batch.add_column(sa.Column("reproducibility", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("study_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("variant", sa.Text(), nullable=True))
        batch.add_column(sa.Column("repeat", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("test_misclassified", sa.JSON(), nullable=True))
        batch.create_index("ix_experiments_study_id", ["study_id"], unique=False)
        batch.create_foreign_key(
            "fk_experiments_study_id_studies", "studies", ["study_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_unique_constraint(
            "uq_experiments_study_id", ["study_id", "variant", "requested_device", "repeat"]
        )


def downgrade() -> None:
    # An older version knows no `pruned`; the nearest status it has is `cancelled`.
    op.execute("UPDATE experiments SET status = 'cancelled' WHERE status = 'pruned'")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_constraint("uq_experiments_study_id", type_="unique")
        batch.drop_constraint("fk_experiments_study_id_studies", type_="foreignkey")
        batch.drop_index("ix_experiments_study_id")
        for column in ("test_misclassified", "repeat", "variant", "study_id", "reproducibility"):
            batch.drop_column(column)
        batch.alter_column(
            "status",
            existing_type=_status_type(NEW_STATUSES),
            type_=_status_type(OLD_STATUSES),
            existing_nullable=False,
        )
    op.drop_table("studies")
