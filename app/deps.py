"""What routes declare they need. The "404 for anything another key owns" rule lives here, once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from celery import Celery
from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ApiError
from app.models import ApiKey, Dataset, Job, PredictionRun
from app.security import find_active_key
from app.settings import Settings


# Async where nothing blocks: FastAPI runs every sync dependency as a trip to a worker thread of its own.
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_celery(request: Request) -> Celery:
    return request.app.state.celery


async def get_sessions(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
ExportFormatParam = Annotated[
    str | None,
    Query(
        alias="format",
        max_length=40,
        description="an export format pole knows (default: the job's first export.formats); "
        "another is built by a worker on the first request for it",
    ),
]
CeleryDep = Annotated[Celery, Depends(get_celery)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionsDep = Annotated[sessionmaker[Session], Depends(get_sessions)]

_bearer = HTTPBearer(auto_error=False, description="an API key from `pole keys create --name NAME`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_current_key(session: SessionDep, credentials: Credentials) -> ApiKey:
    return authenticate(session, credentials)


def authenticate(session: Session, credentials: HTTPAuthorizationCredentials | None) -> ApiKey:
    if credentials is None:
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>' (create a key with `pole keys create --name NAME`)",
        )
    key = find_active_key(session, credentials.credentials)
    if key is None:
        raise ApiError(401, "invalid or revoked API key; create a new one with `pole keys create --name NAME`")
    return key


CurrentKey = Annotated[ApiKey, Depends(get_current_key)]


def get_owned_dataset(dataset_id: str, key: CurrentKey, session: SessionDep) -> Dataset:
    dataset = session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.owner_id == key.id))
    if dataset is None:
        raise ApiError(404, f"no dataset {dataset_id!r}; GET /v1/datasets lists yours")
    return dataset


def get_owned_job(job_id: str, key: CurrentKey, session: SessionDep) -> Job:
    return owned_job(session, key, job_id)


def owned_job(session: Session, key: ApiKey, job_id: str) -> Job:
    job = session.scalar(select(Job).where(Job.id == job_id, Job.owner_id == key.id))
    if job is None:
        raise ApiError(404, f"no job {job_id!r}; GET /v1/jobs lists yours")
    return job


OwnedDataset = Annotated[Dataset, Depends(get_owned_dataset)]
OwnedJob = Annotated[Job, Depends(get_owned_job)]


def get_owned_prediction(prediction_id: str, job: OwnedJob, key: CurrentKey, session: SessionDep) -> PredictionRun:
    query = select(PredictionRun).where(
        PredictionRun.id == prediction_id, PredictionRun.job_id == job.id, PredictionRun.owner_id == key.id
    )
    run = session.scalar(query)
    if run is None:
        raise ApiError(
            404, f"no prediction run {prediction_id!r} of this job; GET /v1/jobs/{job.id}/predictions lists them"
        )
    return run


OwnedPrediction = Annotated[PredictionRun, Depends(get_owned_prediction)]


def page_params(
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=1024, description="next_cursor from the previous page")] = None,
    limit: Annotated[int | None, Query(ge=1, description="items per page (server default and maximum apply)")] = None,
) -> tuple[str | None, int]:
    return cursor, min(limit or settings.page_size, settings.max_page_size)


PageParams = Annotated[tuple[str | None, int], Depends(page_params)]
