"""The signed-in key's jobs with their live state, and a job's page: its stages, the IoU chart, the radar
of the words chosen per class, its derived jobs and the segmenter's prediction runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.dashboard.auth import SignedIn
from app.dashboard.charts import iou_bar_chart, word_radar
from app.dashboard.templates import page
from app.deps import SessionDep, SettingsDep, owned_job
from app.errors import ApiError
from app.job_service import jobs_out, stage_metrics_out
from app.models import ApiKey, Dataset, Job
from app.override_service import word_summary
from app.prediction_service import predictions_page
from app.routes.jobs import list_jobs
from app.storage import run_layout

router = APIRouter()

MAX_LIVE_JOBS = 100  # ids one poll may ask about


def dashboard_job(job_id: str, key: SignedIn, session: SessionDep) -> Job:
    return owned_job(session, key, job_id)


DashboardJob = Annotated[Job, Depends(dashboard_job)]


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    key: SignedIn,
    session: SessionDep,
    settings: SettingsDep,
    cursor: Annotated[str | None, Query(max_length=1024)] = None,
) -> HTMLResponse:
    listed = list_jobs(key, session, (cursor, settings.page_size))
    jobs = listed["items"]
    return page(
        request,
        "jobs.html",
        key=key,
        jobs=jobs,
        names=_dataset_names(session, key, {job.dataset_id for job in jobs}),
        next_cursor=listed["next_cursor"],
    )


@router.get("/jobs/live")
def live_states(
    key: SignedIn, session: SessionDep, job_id: Annotated[list[str], Query(alias="id", max_length=MAX_LIVE_JOBS)]
) -> dict[str, dict]:
    """State, stage and progress of the asked jobs that are the key's: what the pages' script polls."""
    jobs = session.scalars(select(Job).where(Job.id.in_(job_id), Job.owner_id == key.id))
    return {
        job.id: {
            "state": job.state,
            "stage": job.stage,
            "progress": job.progress,
            "stage_progress": job.stage_progress,
            "message": job.message,
        }
        for job in jobs
    }


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job: DashboardJob, key: SignedIn, session: SessionDep, settings: SettingsDep):
    metrics = {stage: scores.model_dump() for stage, scores in stage_metrics_out(job).items()}
    derived = session.scalars(
        select(Job).where(Job.parent_id == job.id, Job.owner_id == key.id).order_by(Job.created_at)
    ).all()
    has_segmenter = run_layout(settings, job.id).segmenter.is_file()
    return page(
        request,
        "job.html",
        key=key,
        job=jobs_out(session, [job])[0],  # with its place in the key's queue while held
        dataset=job.dataset,
        chart=iou_bar_chart(metrics, job.dataset.classes),
        radars=_word_radars(session, job),
        derived=derived,
        predictions=predictions_page(session, job, key, None, settings.page_size)["items"] if has_segmenter else [],
        has_segmenter=has_segmenter,
    )


def _word_radars(session: Session, job: Job) -> list:
    try:
        summary = word_summary(session, job)
    except ApiError as err:
        if err.status_code != 409:  # 409: no word chosen yet
            raise
        return []
    return [
        word_radar(c.class_name, c.images, c.candidates, {w.word: w.share for w in c.words}) for c in summary.classes
    ]


def _dataset_names(session: Session, key: ApiKey, dataset_ids: set[str]) -> dict[str, str]:
    query = select(Dataset.id, Dataset.name).where(Dataset.id.in_(dataset_ids), Dataset.owner_id == key.id)
    return dict(session.execute(query).all())
