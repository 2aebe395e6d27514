"""Workers advertise the weights they hold, so the API refuses jobs no live worker can load; jobs get warnings.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.add_column("workers", sa.Column("held_weights", JSON, nullable=True))
    op.add_column("jobs", sa.Column("warnings", JSON, nullable=True, server_default=sa.text("'[]'")))


def downgrade() -> None:
    # Batch mode: SQLite drops a column by copying its table.
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("warnings")
    with op.batch_alter_table("workers") as workers:
        workers.drop_column("held_weights")
