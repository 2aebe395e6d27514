"""/v1/jobs: create (with Idempotency-Key), list, show, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.deps import CeleryDep, CurrentKey, OwnedJob, PageParams, SessionDep, SettingsDep
from app.job_service import cancel_job, create_job, job_out
from app.models import Job, JobState
from app.openapi import error_responses
from app.pagination import paginate
from app.schemas import JobCreate, JobOut, Page

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=201,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "an Idempotency-Key replay"},
        **error_responses(404, 409, 422, 503),
    },
)
def post_job(
    body: JobCreate,
    response: Response,
    key: CurrentKey,
    session: SessionDep,
    settings: SettingsDep,
    celery: CeleryDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JobOut:
    """Queue a pipeline run on one of your datasets. Only `dataset_id` is required."""
    job, created = create_job(session, settings, celery, owner=key, body=body, idempotency_key=idempotency_key)
    if not created:
        response.status_code = 200
    return job_out(job)


@router.get("", response_model=Page[JobOut])
def list_jobs(
    key: CurrentKey,
    session: SessionDep,
    page: PageParams,
    dataset_id: str | None = None,
    state: Annotated[JobState | None, Query()] = None,
) -> dict:
    query = select(Job).where(Job.owner_id == key.id).options(selectinload(Job.stages), selectinload(Job.metrics))
    if dataset_id:
        query = query.where(Job.dataset_id == dataset_id)
    if state:
        query = query.where(Job.state == state)
    jobs, next_cursor = paginate(session, query, (Job.created_at, Job.id), *page, descending=True)
    return {"items": [job_out(j) for j in jobs], "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobOut)
def get_job(job: OwnedJob) -> JobOut:
    return job_out(job)


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(409))
def post_cancel(job: OwnedJob, session: SessionDep) -> JobOut:
    """Cooperative: a queued job is cancelled at once, a running one at its next batch boundary."""
    return job_out(cancel_job(session, job))
