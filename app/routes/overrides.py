"""Reviewing a job's chosen [CLS] words: their share per class, and the overrides a derived job applies
(POST /v1/jobs with `parent_job_id` starts one)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from app.deps import OwnedJob, SessionDep, SettingsDep
from app.openapi import error_responses
from app.override_service import (
    EXAMPLES_PER_WORD,
    add_override,
    list_overrides,
    override_out,
    remove_override,
    word_summary,
)
from app.schemas import OverrideIn, OverrideOut, WordSummaryOut

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["overrides"])
INT32_MAX = 2**31 - 1  # the largest id the column holds


@router.get("/words", response_model=WordSummaryOut, responses=error_responses(409))
def get_words(
    job: OwnedJob,
    session: SessionDep,
    examples: Annotated[int, Query(ge=0, le=50, description="example image ids per word")] = EXAMPLES_PER_WORD,
) -> WordSummaryOut:
    """Per class, each word select_prompts chose (or a derived job's overrides set), with how many of
    the class's images got it, their share and some of their ids; and the overrides made so far.
    409 until the job has recorded its chosen words."""
    return word_summary(session, job, examples)


@router.get("/overrides", response_model=list[OverrideOut])
def get_overrides(job: OwnedJob, session: SessionDep) -> list[OverrideOut]:
    """The overrides of this job's words, oldest first (the order a derived job applies them in)."""
    return [override_out(o) for o in list_overrides(session, job)]


@router.post("/overrides", status_code=201, response_model=OverrideOut, responses=error_responses(409, 422))
def post_override(job: OwnedJob, body: OverrideIn, session: SessionDep, settings: SettingsDep) -> OverrideOut:
    """Correct a word: `use` a word (a candidate or a new one) for one image's class or a whole class,
    or `drop` a candidate of a class. A newer `use` on the same target replaces the older one. The job
    itself is not changed: start a derived job (POST /v1/jobs with `parent_job_id`) to apply them.
    409 until the job has recorded its chosen words, or when the override contradicts another."""
    return override_out(add_override(session, settings, job, body))


@router.delete("/overrides/{override_id}", status_code=204, response_class=Response)
def delete_override(
    job: OwnedJob,
    override_id: Annotated[int, Path(ge=1, le=INT32_MAX, description="an override's id")],
    session: SessionDep,
) -> Response:
    """Forget an override; derived jobs already started keep the list they applied (in their config)."""
    remove_override(session, job, override_id)
    return Response(status_code=204)
