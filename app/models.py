"""The tables. Owned by the service: the API writes datasets, jobs and prediction runs, the worker
writes their progress and results. Never returned to clients as they are (see schemas.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

JsonColumn = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python on every backend (SQLite keeps no zone, so store naive UTC)."""

    impl = DateTime
    cache_ok = True

    @property
    def python_type(self) -> type:
        return datetime

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    cancelled = "cancelled"
    succeeded = "succeeded"
    failed = "failed"


ACTIVE_STATES = (JobState.queued, JobState.running, JobState.cancelling)
FINAL_STATES = (JobState.cancelled, JobState.succeeded, JobState.failed)
# A prediction run is claimed, leased and requeued as a job is (worker.lease, worker.reaper), with the
# states of a job that cannot be cancelled.
DATASET_STATES = ("validating", "ready", "invalid")
OVERRIDE_ACTIONS = ("use", "drop")
PREDICTION_STATES = (JobState.queued, JobState.running, JobState.succeeded, JobState.failed)
ACTIVE_PREDICTION_STATES = (JobState.queued, JobState.running)


class Base(DeclarativeBase):
    # Named constraints, so later migrations can alter them on every backend (SQLite included).
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(16))  # the key's first characters, to tell keys apart
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; the key itself is never stored
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    name: Mapped[str] = mapped_column(String(255))  # the uploaded file's name
    path: Mapped[str] = mapped_column(String(255))  # relative to the data dir
    layout: Mapped[str] = mapped_column(String(16))
    classes: Mapped[list[str]] = mapped_column(JsonColumn)
    image_count: Mapped[int] = mapped_column(Integer)
    tag_counts: Mapped[dict[str, int]] = mapped_column(JsonColumn)
    gt_count: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # extracted datasets may pass 2 GiB
    # validating (uploaded, being checked in the background) -> ready | invalid (`problems` says why)
    state: Mapped[str] = mapped_column(String(16), default="ready", server_default="ready")
    progress: Mapped[float] = mapped_column(Float, default=1.0, server_default="1.0")
    problems: Mapped[list[Any] | None] = mapped_column(JsonColumn)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    images: Mapped[list[Image]] = relationship(back_populates="dataset", cascade="all, delete-orphan")
    jobs: Mapped[list[Job]] = relationship(back_populates="dataset", cascade="all, delete-orphan")

    __table_args__ = (
        Index("ix_datasets_owner_created", "owner_id", "created_at", "id"),
        CheckConstraint(f"state IN ({', '.join(repr(s) for s in DATASET_STATES)})", name="state"),
    )


class Image(Base):
    __tablename__ = "images"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(String(255))
    file: Mapped[str] = mapped_column(String(512))  # relative to the dataset folder
    tags: Mapped[list[str]] = mapped_column(JsonColumn)  # class names
    split: Mapped[str] = mapped_column(String(64))
    has_mask: Mapped[bool]

    dataset: Mapped[Dataset] = relationship(back_populates="images")

    __table_args__ = (UniqueConstraint("dataset_id", "image_id"),)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    # A derived job reuses its parent's train_cam and select_prompts outputs and re-runs the rest with overrides.
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued)
    preset: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JsonColumn)  # fully resolved, as the pipeline saw it
    seed: Mapped[int] = mapped_column(Integer)
    models: Mapped[dict[str, Any]] = mapped_column(JsonColumn)  # CLIP and backbone names/weights asked for

    stage: Mapped[str | None] = mapped_column(String(32))
    stage_progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The attempt that owns the job: the worker writes only while its lease is the one stored here,
    # so a worker presumed dead and replaced can never overwrite its successor.
    lease: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)

    checkpoints: Mapped[dict[str, Any]] = mapped_column(JsonColumn, default=dict)  # stage -> {file: sha256}
    provenance: Mapped[dict[str, Any]] = mapped_column(JsonColumn, default=dict)  # stage -> seed/weights/checkpoints
    failed_images: Mapped[dict[str, str]] = mapped_column(JsonColumn, default=dict)  # image id -> reason
    warnings: Mapped[list[Any] | None] = mapped_column(JsonColumn, server_default=text("'[]'"))

    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the job's message was last handed to the broker: the reaper re-sends one that vanished.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    dataset: Mapped[Dataset] = relationship(back_populates="jobs")
    stages: Mapped[list[JobStage]] = relationship(
        cascade="all, delete-orphan", order_by="JobStage.pk", back_populates="job"
    )
    metrics: Mapped[list[StageMetrics]] = relationship(cascade="all, delete-orphan", order_by="StageMetrics.pk")

    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key"),
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),
        # The reaper's scan: running jobs by heartbeat.
        Index("ix_jobs_state_heartbeat", "state", "heartbeat_at"),
        CheckConstraint(f"state IN ({', '.join(repr(s.value) for s in JobState)})", name="state"),
    )


class JobStage(Base):
    """When each pipeline stage of a job started and ended (`skipped`: finished by an earlier attempt)."""

    __tablename__ = "job_stages"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # running | finished | skipped
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="stages")

    __table_args__ = (UniqueConstraint("job_id", "name"),)


class Selection(Base):
    """The [CLS] word chosen for one (image, class) of a job, with every candidate's CLIP score."""

    __tablename__ = "selections"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[str] = mapped_column(String(255))
    label: Mapped[int] = mapped_column(Integer)
    class_name: Mapped[str] = mapped_column(String(255))
    candidates: Mapped[list[str]] = mapped_column(JsonColumn)
    scores: Mapped[list[float]] = mapped_column(JsonColumn)
    chosen: Mapped[str] = mapped_column(String(255))
    # A derived job's word set by a person's override (WordOverride) rather than by CLIP.
    overridden: Mapped[bool] = mapped_column(default=False, server_default=false())

    __table_args__ = (
        UniqueConstraint("job_id", "image_id", "class_name"),
        Index("ix_selections_job_class", "job_id", "class_name"),
    )


class WordOverride(Base):
    """A person's decision on the words of a reviewed job: `use` a word for one image's class (image_id set)
    or for the whole class (image_id None), or `drop` a candidate word of a class. Derived jobs apply them."""

    __tablename__ = "word_overrides"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    image_id: Mapped[str | None] = mapped_column(String(255))
    class_name: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(8))
    word: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_word_overrides_job_class", "job_id", "class_name"),
        CheckConstraint(f"action IN ({', '.join(repr(a) for a in OVERRIDE_ACTIONS)})", name="action"),
    )


class StageMetrics(Base):
    """Quality of one evaluation stage of a job (only when the dataset has ground truth)."""

    __tablename__ = "stage_metrics"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(32))
    miou: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    per_class_iou: Mapped[dict[str, Any]] = mapped_column(JsonColumn, default=dict)
    data: Mapped[dict[str, Any]] = mapped_column(JsonColumn)  # the stage's whole metrics.json

    __table_args__ = (UniqueConstraint("job_id", "stage"),)


class PredictionRun(Base):
    """New images labelled by a succeeded job's trained segmenter (train_seg), on a worker.

    Its files (the uploaded images, masks, overlays, archives) are in its own folder of the data
    directory (app.storage.prediction_dir); the job's run directory is only read."""

    __tablename__ = "prediction_runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id"))
    # The job whose segmenter labels the images; deleting the job (a dataset's cascade) deletes its runs.
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))  # the uploaded file's name
    # image id (the file's stem) -> the file, relative to the run's inputs folder. Deferred: a run's
    # state is polled, and an upload may hold tens of thousands of images.
    images: Mapped[dict[str, str]] = mapped_column(JsonColumn, deferred=True)
    image_count: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease: Mapped[str | None] = mapped_column(String(32))  # as a job's: the attempt that may write
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    # file (as `images` names it, or as uploaded when it got no id) -> why it was not labelled
    failed_images: Mapped[dict[str, str]] = mapped_column(JsonColumn, default=dict)
    # The segmenter's label names (label k is label_names[k - 1]), for archives; set when the run succeeds.
    label_names: Mapped[list[str] | None] = mapped_column(JsonColumn)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship()

    __table_args__ = (
        Index("ix_prediction_runs_job_created", "job_id", "created_at", "id"),
        # The reaper's scan, as for jobs.
        Index("ix_prediction_runs_state_heartbeat", "state", "heartbeat_at"),
        CheckConstraint(f"state IN ({', '.join(repr(s.value) for s in PREDICTION_STATES)})", name="state"),
    )


class Worker(Base):
    """A worker's main process as it last reported itself; /readyz counts those whose heartbeat is fresh."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)  # `pole worker --name`, stable across restarts
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queue: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The weight tags it can load without a network (ml.spec.weight_tags); None until its first scan ends.
    held_weights: Mapped[dict[str, Any] | None] = mapped_column(JsonColumn)

    # The readiness count: live workers of one queue.
    __table_args__ = (Index("ix_workers_queue_heartbeat", "queue", "heartbeat_at"),)
