"""Prediction runs: new images labelled by a succeeded job's trained segmenter, on a worker.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision (app.models may move on).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
PREDICTION_STATES = ("queued", "running", "succeeded", "failed")


def upgrade() -> None:
    op.create_table(
        "prediction_runs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("images", JSON, nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(32), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("failed_images", JSON, nullable=False),
        sa.Column("label_names", JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_runs"),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name="fk_prediction_runs_owner_id_api_keys"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_prediction_runs_job_id_jobs"),
        sa.CheckConstraint(
            f"state IN ({', '.join(repr(s) for s in PREDICTION_STATES)})", name="ck_prediction_runs_state"
        ),
    )
    op.create_index("ix_prediction_runs_job_created", "prediction_runs", ["job_id", "created_at", "id"])
    op.create_index("ix_prediction_runs_state_heartbeat", "prediction_runs", ["state", "heartbeat_at"])


def downgrade() -> None:
    op.drop_table("prediction_runs")
