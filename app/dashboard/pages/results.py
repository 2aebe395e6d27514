"""What a job made of each image: the gallery (image | CAM heat maps | mask overlay), one image's page with
every candidate word's score, and the pictures, drawn by the REST API's own result routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse

from app.dashboard.auth import SignedIn
from app.dashboard.gallery import SORTS, Sort, job_gallery
from app.dashboard.pages.jobs import DashboardJob
from app.dashboard.pictures import PICTURE_SIDE, thumbnail_png
from app.dashboard.templates import page
from app.deps import SessionDep, SettingsDep
from app.models import JobState
from app.override_service import list_overrides
from app.result_service import job_image, job_image_out
from app.routes.results import get_cams, get_overlay
from app.storage import dataset_dir

router = APIRouter()

PRIVATE_IMAGE = {"Cache-Control": "private, max-age=3600"}


@router.get("/jobs/{job_id}/gallery", response_class=HTMLResponse)
def gallery_page(
    request: Request,
    job: DashboardJob,
    key: SignedIn,
    session: SessionDep,
    class_name: Annotated[str | None, Query(alias="class", max_length=255)] = None,
    sort: Sort = "upload",
    page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    gallery = job_gallery(
        session, request.app.state.image_scores, job, class_name=class_name, sort=sort, page=page_number
    )
    return page(
        request,
        "gallery.html",
        key=key,
        job=job,
        gallery=gallery,
        sorts=SORTS,
        results=job.state == JobState.succeeded,
    )


@router.get("/jobs/{job_id}/images/{image_id}", response_class=HTMLResponse)
def image_page(request: Request, image_id: str, job: DashboardJob, key: SignedIn, session: SessionDep):
    image = job_image_out(session, job, image_id)
    row = job_image(session, job, image_id)
    iou = request.app.state.image_scores.scores(job, [image_id])[image_id] if row.has_mask else None
    overrides = [o for o in list_overrides(session, job) if o.image_id in (None, image_id)]
    return page(
        request,
        "image.html",
        key=key,
        job=job,
        image=image,
        has_mask=row.has_mask,
        iou=iou,
        overrides=overrides,
        results=job.state == JobState.succeeded,
    )


@router.get("/jobs/{job_id}/images/{image_id}/picture.png")
def image_picture(image_id: str, job: DashboardJob, session: SessionDep, settings: SettingsDep) -> Response:
    row = job_image(session, job, image_id)
    picture = thumbnail_png(dataset_dir(settings, job.dataset.path) / row.file, settings.max_image_pixels, PICTURE_SIDE)
    return Response(picture, media_type="image/png", headers=PRIVATE_IMAGE)


@router.get("/jobs/{job_id}/images/{image_id}/overlay.png")
def image_overlay(image_id: str, job: DashboardJob, session: SessionDep, settings: SettingsDep) -> Response:
    response = get_overlay(image_id, job, session, settings)
    response.headers.update(PRIVATE_IMAGE)
    return response


@router.get("/jobs/{job_id}/images/{image_id}/cams.png")
def image_cams(image_id: str, job: DashboardJob, session: SessionDep, settings: SettingsDep) -> Response:
    response = get_cams(image_id, job, session, settings)
    response.headers.update(PRIVATE_IMAGE)
    return response
