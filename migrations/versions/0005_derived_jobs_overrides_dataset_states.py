"""Derived jobs and the word overrides a person made; datasets validated in the background; jobs remember
when they were last sent to the queue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision (app.models may move on).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
DATASET_STATES = ("validating", "ready", "invalid")
OVERRIDE_ACTIONS = ("use", "drop")


def upgrade() -> None:
    # Batch mode: SQLite adds a foreign key only by copying its table.
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
        jobs.add_column(sa.Column("enqueued_at", sa.DateTime(), nullable=True))
        jobs.create_foreign_key("fk_jobs_parent_id_jobs", "jobs", ["parent_id"], ["id"], ondelete="SET NULL")
        jobs.create_index("ix_jobs_parent_id", ["parent_id"])
    op.create_table(
        "word_overrides",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("image_id", sa.String(255), nullable=True),
        sa.Column("class_name", sa.String(255), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("word", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            f"action IN ({', '.join(repr(a) for a in OVERRIDE_ACTIONS)})", name="ck_word_overrides_action"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_word_overrides_job_id_jobs"),
        sa.PrimaryKeyConstraint("pk", name="pk_word_overrides"),
    )
    op.create_index("ix_word_overrides_job_class", "word_overrides", ["job_id", "class_name"])
    with op.batch_alter_table("selections") as selections:
        selections.add_column(sa.Column("overridden", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("datasets") as datasets:
        datasets.add_column(sa.Column("state", sa.String(16), nullable=False, server_default="ready"))
        datasets.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="1.0"))
        datasets.add_column(sa.Column("problems", JSON, nullable=True))
        # The upload caps allow an extracted dataset of several GiB: more than a 32-bit integer holds.
        datasets.alter_column("size_bytes", type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
        datasets.create_check_constraint(
            "ck_datasets_state", f"state IN ({', '.join(repr(s) for s in DATASET_STATES)})"
        )


def downgrade() -> None:
    with op.batch_alter_table("datasets") as datasets:
        datasets.drop_constraint("ck_datasets_state", type_="check")
        datasets.alter_column("size_bytes", type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
        datasets.drop_column("problems")
        datasets.drop_column("progress")
        datasets.drop_column("state")
    with op.batch_alter_table("selections") as selections:
        selections.drop_column("overridden")
    op.drop_index("ix_word_overrides_job_class", table_name="word_overrides")
    op.drop_table("word_overrides")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_index("ix_jobs_parent_id")
        jobs.drop_constraint("fk_jobs_parent_id_jobs", type_="foreignkey")
        jobs.drop_column("enqueued_at")
        jobs.drop_column("parent_id")
