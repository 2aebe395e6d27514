"""Initial schema: API keys, datasets and their images, jobs with their stages, selections and metrics.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types as they were at this revision (app.models may move on).
JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
JOB_STATES = ("queued", "running", "cancelling", "cancelled", "succeeded", "failed")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("path", sa.String(255), nullable=False),
        sa.Column("layout", sa.String(16), nullable=False),
        sa.Column("classes", JSON, nullable=False),
        sa.Column("image_count", sa.Integer(), nullable=False),
        sa.Column("tag_counts", JSON, nullable=False),
        sa.Column("gt_count", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name="fk_datasets_owner_id_api_keys"),
    )
    op.create_index("ix_datasets_owner_created", "datasets", ["owner_id", "created_at", "id"])
    op.create_table(
        "images",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("image_id", sa.String(255), nullable=False),
        sa.Column("file", sa.String(512), nullable=False),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("split", sa.String(64), nullable=False),
        sa.Column("has_mask", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_images"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], ondelete="CASCADE", name="fk_images_dataset_id_datasets"
        ),
        sa.UniqueConstraint("dataset_id", "image_id", name="uq_images_dataset_id_image_id"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("preset", sa.String(64), nullable=False),
        sa.Column("config", JSON, nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("models", JSON, nullable=False),
        sa.Column("stage", sa.String(32), nullable=True),
        sa.Column("stage_progress", sa.Float(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.String(255), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(32), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("checkpoints", JSON, nullable=False),
        sa.Column("provenance", JSON, nullable=False),
        sa.Column("failed_images", JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.ForeignKeyConstraint(["owner_id"], ["api_keys.id"], name="fk_jobs_owner_id_api_keys"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], ondelete="CASCADE", name="fk_jobs_dataset_id_datasets"
        ),
        sa.UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_id_idempotency_key"),
        sa.CheckConstraint(f"state IN ({', '.join(repr(s) for s in JOB_STATES)})", name="ck_jobs_state"),
    )
    op.create_index("ix_jobs_dataset_id", "jobs", ["dataset_id"])
    op.create_index("ix_jobs_owner_created", "jobs", ["owner_id", "created_at", "id"])
    op.create_index("ix_jobs_state_heartbeat", "jobs", ["state", "heartbeat_at"])
    op.create_table(
        "job_stages",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("pk", name="pk_job_stages"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_job_stages_job_id_jobs"),
        sa.UniqueConstraint("job_id", "name", name="uq_job_stages_job_id_name"),
    )
    op.create_table(
        "selections",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("image_id", sa.String(255), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(255), nullable=False),
        sa.Column("candidates", JSON, nullable=False),
        sa.Column("scores", JSON, nullable=False),
        sa.Column("chosen", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_selections"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_selections_job_id_jobs"),
        sa.UniqueConstraint("job_id", "image_id", "class_name", name="uq_selections_job_id_image_id_class_name"),
    )
    op.create_index("ix_selections_job_class", "selections", ["job_id", "class_name"])
    op.create_table(
        "stage_metrics",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("miou", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("per_class_iou", JSON, nullable=False),
        sa.Column("data", JSON, nullable=False),
        sa.PrimaryKeyConstraint("pk", name="pk_stage_metrics"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE", name="fk_stage_metrics_job_id_jobs"),
        sa.UniqueConstraint("job_id", "stage", name="uq_stage_metrics_job_id_stage"),
    )


def downgrade() -> None:
    for table in ("stage_metrics", "selections", "job_stages", "jobs", "images", "datasets", "api_keys"):
        op.drop_table(table)
