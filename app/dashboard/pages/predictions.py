"""A prediction run of a job's trained segmenter: its state and the overlay of every image it labelled."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

from app.dashboard.auth import SignedIn
from app.dashboard.gallery import PAGE_SIZE
from app.dashboard.pages.jobs import DashboardJob
from app.dashboard.templates import page
from app.deps import SessionDep, SettingsDep, get_owned_prediction
from app.prediction_service import prediction_file, prediction_out

router = APIRouter()


@router.get("/jobs/{job_id}/predictions/{prediction_id}", response_class=HTMLResponse)
def prediction_page(
    request: Request,
    prediction_id: str,
    job: DashboardJob,
    key: SignedIn,
    session: SessionDep,
    page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    run = get_owned_prediction(prediction_id, job, key, session)
    labelled = [image_id for image_id, file in run.images.items() if file not in run.failed_images]
    pages = max(1, math.ceil(len(labelled) / PAGE_SIZE))
    page_number = min(page_number, pages)
    return page(
        request,
        "prediction.html",
        key=key,
        job=job,
        run=prediction_out(run),
        images=labelled[(page_number - 1) * PAGE_SIZE : page_number * PAGE_SIZE],
        page_number=page_number,
        pages=pages,
    )


@router.get("/jobs/{job_id}/predictions/{prediction_id}/images/{image_id}/overlay.png")
def prediction_overlay(
    prediction_id: str, image_id: str, job: DashboardJob, key: SignedIn, session: SessionDep, settings: SettingsDep
) -> FileResponse:
    run = get_owned_prediction(prediction_id, job, key, session)
    path = prediction_file(settings, run, image_id, "overlay")
    return FileResponse(path, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
