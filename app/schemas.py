"""What the API accepts and returns; separate from the tables (app/models.py) on purpose."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema

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

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        # No database column or JSON document of PostgreSQL can store U+0000; refuse it up front.
        if _holds_nul(data):
            raise ValueError("text in a job request may not contain NUL (\\u0000) characters")
        return data


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_holds_nul(v) for v in value)
    return False


class StageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    state: str
    started_at: datetime | None
    finished_at: datetime | None


class SplitMetricsOut(BaseModel):
    miou: float | None
    images: int


class StageMetricsOut(BaseModel):
    miou: float | None
    threshold: float | None
    per_class_iou: dict[str, Any]
    background_only_miou: float | None = Field(
        None, description="the same images scored as all background: the floor the maps or masks must beat"
    )
    splits: dict[str, SplitMetricsOut] = Field(
        default_factory=dict, description="per dataset split, when there are several (eval_seg: see held_out_splits)"
    )
    held_out_splits: list[str] = Field(
        default_factory=list, description="eval_seg: the splits the segmenter did not train on"
    )


class RunWarningOut(BaseModel):
    stage: str = Field(description='the stage that found it, or "preflight" for the checks before the first stage')
    check: str = Field(description="which check (see the README's warnings table)")
    message: str
    classes: list[str] = Field(default_factory=list, description="the classes it concerns, if any")


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
    warnings: list[RunWarningOut] = Field(
        description="what looks wrong although the run goes on: untrained weights, empty maps, words chosen by "
        "chance, masks below the all-background floor"
    )
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


class PredictionOut(BaseModel):
    id: str
    job_id: str = Field(description="the job whose trained segmenter labels the images")
    name: str = Field(description="the uploaded file's name")
    state: str = Field(description="queued, running, succeeded or failed")
    progress: float
    message: str | None
    error: str | None
    attempts: int
    image_count: int = Field(description="images named in the upload; each image's id is its file's stem")
    failed_images: dict[str, str] = Field(
        description="file (as named in the upload) -> why it was not labelled: unreadable, over the pixel "
        "limit, not an image, or its id taken by another file"
    )
    classes: list[str] = Field(description="label k of a mask is classes[k - 1]; 0 is background")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    links: dict[str, str]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class ArchivePendingOut(BaseModel):
    """A file a worker is building (an archive, an ONNX model): ask again after the Retry-After header's seconds."""

    detail: str


class ProblemOut(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(description="the file at fault, relative to the dataset folder")
    line: int | None = Field(description="its line, where the problem is on one")
    message: str


class ErrorOut(BaseModel):
    """Every refusal and failure: `detail` says what to fix; some refusals add keys beside it."""

    model_config = ConfigDict(extra="forbid")  # the document lists every key an error body can have

    detail: str
    # Only dataset refusals carry the list, so it is left out of the body (not null) everywhere else.
    problems: list[ProblemOut] | SkipJsonSchema[None] = Field(
        default=None,
        description="every problem found in an uploaded dataset (422 on POST /v1/datasets), or with each "
        "uploaded image when none can be labelled (422 on POST /v1/jobs/{job_id}/predictions)",
        json_schema_extra=lambda schema: schema.pop("default"),  # an absent key, not a null default
    )
