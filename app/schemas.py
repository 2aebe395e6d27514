"""What the API accepts and returns; separate from the tables (app/models.py) on purpose."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last page")


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    layout: str
    image_count: int
    classes: list[str]
    tag_counts: dict[str, int] = Field(description="images tagged with each class")
    gt_count: int = Field(description="images with a ground-truth mask")
    size_bytes: int
    created_at: datetime


class ImageOut(BaseModel):
    id: str
    file: str
    tags: list[str]
    split: str
    has_mask: bool


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    preset: str | None = Field(default=None, description="a preset name; the server's default when omitted")
    config: dict[str, Any] = Field(default_factory=dict, description="overrides, same keys as config.json")
    synonyms: dict[str, list[str]] = Field(
        default_factory=dict, description="candidate [CLS] words per class; they win over every other list"
    )


class StageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    state: str
    started_at: datetime | None
    finished_at: datetime | None


class StageMetricsOut(BaseModel):
    miou: float | None
    threshold: float | None
    per_class_iou: dict[str, Any]


class JobOut(BaseModel):
    id: str
    dataset_id: str
    state: str
    preset: str
    stage: str | None
    stage_progress: float
    progress: float
    message: str | None
    stages: list[StageOut]
    attempts: int
    error: str | None
    config: dict[str, Any]
    seed: int
    models: dict[str, Any]
    checkpoints: dict[str, Any]
    failed_images: dict[str, str]
    metrics: dict[str, StageMetricsOut] = Field(description="per evaluation stage, when the dataset has ground truth")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    links: dict[str, str]


class SelectionOut(BaseModel):
    image: str
    label: int
    class_name: str = Field(serialization_alias="class")
    chosen: str
    candidates: list[str]
    scores: list[float]


class JobImageOut(BaseModel):
    image: str
    tags: list[str]
    split: str
    failed: str | None = Field(description="why the pipeline dropped this image, if it did")
    selections: list[SelectionOut]
    links: dict[str, str]


class MetricsOut(BaseModel):
    job_id: str
    state: str
    has_ground_truth: bool
    stages: dict[str, StageMetricsOut]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
