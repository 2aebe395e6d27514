"""What the API accepts and returns; separate from the tables (app/models.py) on purpose."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

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
    size_bytes: int = Field(description="on disk: the zip while validating, the dataset once ready, 0 if invalid")
    state: Literal["validating", "ready", "invalid"] = Field(
        description="validating (uploaded, being checked in the background; layout, classes and counts "
        "are filled in once ready) -> ready (jobs may use it) | invalid (nothing kept but `problems`)"
    )
    progress: float = Field(description="share of the upload checked so far, 0..1")
    problems: list[ProblemOut] | None = Field(description="why it is invalid: every problem found; null otherwise")
    created_at: datetime


class ImageOut(BaseModel):
    id: str
    file: str
    tags: list[str]
    split: str
    has_mask: bool


class OverrideIn(BaseModel):
    """A person's correction of the words a job chose (see POST /v1/jobs/{job_id}/overrides)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    image: str | None = Field(
        default=None, max_length=255, description="one image's id; omitted: the whole class (`use`), or for `drop`"
    )
    class_name: str = Field(alias="class", min_length=1, max_length=255, description="a class of the dataset")
    action: Literal["use", "drop"] = Field(
        description="use: this word for the image's class (or every image of the class); drop: never this "
        "candidate for the class, each image it was chosen for gets its best remaining candidate"
    )
    word: str = Field(
        min_length=1, max_length=255, description="a candidate word of the class; `use` also takes a new word"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_nul_characters(cls, data: Any) -> Any:
        if _holds_nul(data):  # as in JobCreate: no column of PostgreSQL can store or compare U+0000
            raise ValueError("text in an override may not contain NUL (\\u0000) characters")
        return data


class OverrideOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    id: int
    job_id: str = Field(description="the reviewed job whose words it corrects")
    image: str | None = Field(description="null: the whole class")
    class_name: str = Field(serialization_alias="class")
    action: str
    word: str
    created_at: datetime


class WordShareOut(BaseModel):
    word: str
    count: int = Field(description="images of the class that got this word")
    share: float = Field(description="count / the class's images with a chosen word")
    examples: list[str] = Field(description="some of those images' ids, in upload order")


class ClassWordsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(serialization_alias="class")
    images: int = Field(description="images of the class with a chosen word")
    candidates: list[str] = Field(description="the words select_prompts chose among")
    words: list[WordShareOut] = Field(description="each chosen word, the most chosen first")


class WordSummaryOut(BaseModel):
    job_id: str
    classes: list[ClassWordsOut] = Field(description="the dataset's classes with at least one chosen word")
    overrides: list[OverrideOut] = Field(description="the corrections made so far, oldest first")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str | None = Field(default=None, description="required unless parent_job_id is given")
    parent_job_id: str | None = Field(
        default=None,
        description="derive from this job: reuse its train_cam and select_prompts outputs and re-run from "
        "train_pole with its word overrides (config may then change only the stages after select_prompts)",
    )
    overrides: list[OverrideIn] | None = Field(
        default=None,
        max_length=1000,
        description="with parent_job_id: word overrides to store on the parent before deriving",
    )
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

    @model_validator(mode="after")
    def _dataset_or_parent(self) -> JobCreate:
        if self.dataset_id is None and self.parent_job_id is None:
            raise ValueError("give dataset_id, or parent_job_id to derive a job from one of yours")
        if self.overrides is not None and self.parent_job_id is None:
            raise ValueError("overrides apply to a derived job: give parent_job_id too")
        if "derive" in self.config:
            raise ValueError("config.derive is set from parent_job_id and the parent's overrides; leave it out")
        return self


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
    parent_id: str | None = Field(description="the job this one was derived from (its words overridden), if any")
    state: str
    preset: str
    stage: str | None
    stage_progress: float
    progress: float
    message: str | None
    queued_behind: int | None = Field(
        description="while the job waits for one of your running jobs to end (the server runs a few of each "
        "key's jobs at once): how many of your jobs start before it; null otherwise"
    )
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
    overridden: bool = Field(description="the word was set by a person's override, not chosen by CLIP")


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


class SynonymSourceOut(BaseModel):
    source: str = Field(description="dataset (its synonyms.csv), builtin (pole's table), wordnet or llm")
    words: list[str] = Field(description="its words for the class, the class name and duplicates left out")
    error: str | None = Field(
        default=None, description="llm only: why the language model gave none (a job then uses the other sources)"
    )


class ClassSynonymsOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(serialization_alias="class")
    sources: list[SynonymSourceOut] = Field(
        description="each source that knows the class, in the order a job looks them up (the first wins; the "
        "language model's words join it)"
    )
    used_source: str = Field(
        description='where a job of the default preset takes the words from, e.g. "builtin+llm"; "none": the class '
        "name alone. A job's own `synonyms` win over all of these"
    )
    candidates: list[str] = Field(
        description="those words, before CLIP ranks them by similarity to the class name and keeps num_synonyms"
    )


class SynonymPreviewOut(BaseModel):
    dataset_id: str
    preset: str = Field(description="the server's default preset, whose select_prompts settings apply")
    num_synonyms: int = Field(description="m: the synonyms a job keeps per class, and asks the language model for")
    llm_model: str | None = Field(
        description="the language model asked (POLE_SYNONYM_LLM_MODEL; its answers are cached, so a job uses the "
        "words shown); null: none configured"
    )
    classes: list[ClassSynonymsOut]


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
