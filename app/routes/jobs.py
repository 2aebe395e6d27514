"""/v1/jobs: create (with Idempotency-Key), list, show, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from app.deps import (
    CeleryDep,
    Credentials,
    CurrentKey,
    OwnedJob,
    PageParams,
    SessionDep,
    SessionsDep,
    SettingsDep,
    authenticate,
    owned_job,
)
from app.job_service import cancel_job, create_job, job_out, jobs_out
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
    return jobs_out(session, [job])[0]


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
    return {"items": jobs_out(session, jobs), "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, credentials: Credentials, sessions: SessionsDep) -> JobOut:
    """The job's state, stage and progress: what clients poll while it runs."""
    # One trip to a worker thread for the key, the read and the answer, where the sync dependencies and
    # a sync endpoint would take six; while a job trains on the same cores every trip queues for the CPU
    # and the interpreter (bench/api_load.py). No blocking call runs on the event loop.
    return await run_in_threadpool(_read_owned_job, sessions, credentials, job_id)


def _read_owned_job(
    sessions: sessionmaker[Session], credentials: HTTPAuthorizationCredentials | None, job_id: str
) -> JobOut:
    with sessions() as session:
        return jobs_out(session, [owned_job(session, authenticate(session, credentials), job_id)])[0]


@router.post("/{job_id}/cancel", response_model=JobOut, responses=error_responses(409))
def post_cancel(job: OwnedJob, session: SessionDep, settings: SettingsDep, celery: CeleryDep) -> JobOut:
    """Cooperative: a queued job is cancelled at once, a running one at its next batch boundary."""
    return job_out(cancel_job(session, settings, celery, job))
