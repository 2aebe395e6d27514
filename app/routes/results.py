"""What a job produced: the mask archive, the chosen [CLS] words, per-image masks and overlays, metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from sqlalchemy import select

from app.deps import OwnedJob, PageParams, SessionDep, SettingsDep
from app.errors import ApiError
from app.job_service import stage_metrics_out
from app.models import Image, Job, JobState, Selection
from app.openapi import error_responses
from app.pagination import paginate
from app.schemas import JobImageOut, MetricsOut, Page, SelectionOut
from app.storage import dataset_dir, run_layout
from ml.spec.config import config_from_dict
from ml.spec.registry import EXPORT_FORMATS, final_masks_stage

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["results"])

BINARY = {"schema": {"type": "string", "format": "binary"}}
# A result file exists once the job has succeeded (409 before), for images it did not drop (404).
PNG = {200: {"content": {"image/png": BINARY}}, **error_responses(409)}


def _require_succeeded(job: Job, what: str) -> None:
    if job.state != JobState.succeeded:
        raise ApiError(409, f"job is {job.state}; the {what} exists once it has succeeded (GET /v1/jobs/{job.id})")


@router.get(
    "/archive",
    response_class=FileResponse,
    responses={200: {"content": {"application/zip": BINARY}}, **error_responses(409, 410)},
)
def get_archive(
    job: OwnedJob,
    settings: SettingsDep,
    export_format: Annotated[
        str | None,
        Query(alias="format", max_length=40, description="one of the job's export.formats (default: the first)"),
    ] = None,
) -> FileResponse:
    """The final masks in an export format's layout (CVAT "Segmentation mask 1.1" by default) with
    selections.csv, failed_images.csv, metrics.json and config.json, as a .zip."""
    _require_succeeded(job, "archive")
    formats = config_from_dict(job.config).export.formats
    name = export_format or formats[0]
    if name not in formats:
        known = "" if name in EXPORT_FORMATS else f"; formats pole knows: {', '.join(EXPORT_FORMATS)}"
        raise ApiError(404, f"this job exported {', '.join(formats)}, not {name[:40]!r}{known}")
    path = run_layout(settings, job.id).archive(name)
    if not path.is_file():
        raise ApiError(410, "the archive file is missing from the data directory; run the job again")
    suffix = "" if name == formats[0] else f"_{name}"
    return FileResponse(path, media_type="application/zip", filename=f"pole_masks_{job.id}{suffix}.zip")


def _selection_out(row: Selection) -> SelectionOut:
    return SelectionOut(
        image=row.image_id,
        label=row.label,
        class_name=row.class_name,
        chosen=row.chosen,
        candidates=row.candidates,
        scores=row.scores,
    )


@router.get("/selections", response_model=Page[SelectionOut])
def list_selections(
    job: OwnedJob,
    session: SessionDep,
    page: PageParams,
    image: str | None = None,
    class_name: Annotated[str | None, Query(alias="class")] = None,
) -> dict:
    """The word chosen for each (image, class), with every candidate's CLIP score."""
    query = select(Selection).where(Selection.job_id == job.id)
    if image:
        query = query.where(Selection.image_id == image)
    if class_name:
        query = query.where(Selection.class_name == class_name)
    rows, next_cursor = paginate(session, query, (Selection.pk,), *page)
    return {"items": [_selection_out(r) for r in rows], "next_cursor": next_cursor}


def _job_image(session, job: Job, image_id: str) -> Image:
    row = session.scalar(select(Image).where(Image.dataset_id == job.dataset_id, Image.image_id == image_id))
    if row is None:
        raise ApiError(404, f"no image {image_id!r} in this job's dataset; GET /v1/datasets/{job.dataset_id}/images")
    return row


@router.get("/images/{image_id}", response_model=JobImageOut)
def get_job_image(image_id: str, job: OwnedJob, session: SessionDep) -> JobImageOut:
    """One image's tags, chosen words, and links to its mask and overlays."""
    row = _job_image(session, job, image_id)
    selections = session.scalars(
        select(Selection).where(Selection.job_id == job.id, Selection.image_id == image_id).order_by(Selection.pk)
    )
    failed = job.failed_images.get(image_id)
    base = f"/v1/jobs/{job.id}/images/{image_id}"
    links = {}
    if job.state == JobState.succeeded and not failed:
        links = {"mask": f"{base}/mask.png", "overlay": f"{base}/overlay.png", "cams": f"{base}/cams.png"}
    return JobImageOut(
        image=image_id,
        tags=row.tags,
        split=row.split,
        failed=failed,
        selections=[_selection_out(s) for s in selections],
        links=links,
    )


def _final_mask(settings, job: Job, image_id: str):
    return run_layout(settings, job.id).mask(final_masks_stage(config_from_dict(job.config)), image_id)


def _result_file(job: Job, image_id: str, path, what: str):
    _require_succeeded(job, what)
    if image_id in job.failed_images:
        raise ApiError(
            404, f"image {image_id!r} failed during the job ({job.failed_images[image_id]}); it has no {what}"
        )
    if not path.is_file():
        raise ApiError(404, f"no {what} for image {image_id!r} in this job")
    return path


@router.get("/images/{image_id}/mask.png", response_class=FileResponse, responses=PNG)
def get_mask(image_id: str, job: OwnedJob, session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The pseudo mask as a palette PNG (pixel values are labels; 255 = uncertain)."""
    _job_image(session, job, image_id)
    return FileResponse(
        _result_file(job, image_id, _final_mask(settings, job, image_id), "mask"), media_type="image/png"
    )


@router.get("/images/{image_id}/overlay.png", response_class=Response, responses=PNG)
def get_overlay(image_id: str, job: OwnedJob, session: SessionDep, settings: SettingsDep) -> Response:
    """The image with its pseudo mask blended over it."""
    from ml.data.images import read_image, read_mask
    from ml.data.overlays import mask_overlay_png

    row = _job_image(session, job, image_id)
    mask = _result_file(job, image_id, _final_mask(settings, job, image_id), "mask")
    image = read_image(dataset_dir(settings, job.dataset.path) / row.file)
    return Response(mask_overlay_png(image, read_mask(mask)), media_type="image/png")


@router.get("/images/{image_id}/cams.png", response_class=Response, responses=PNG)
def get_cams(image_id: str, job: OwnedJob, session: SessionDep, settings: SettingsDep) -> Response:
    """One heat map per tagged class: the class activation maps the masks grew from."""
    from ml.data.images import read_image
    from ml.data.overlays import cam_heatmaps_png

    row = _job_image(session, job, image_id)
    layout = run_layout(settings, job.id)
    _result_file(job, image_id, layout.cams(image_id), "class activation maps")
    cams = layout.read_cams(image_id)
    image = read_image(dataset_dir(settings, job.dataset.path) / row.file)
    return Response(cam_heatmaps_png(image, cams.cam, cams.keys, job.dataset.classes), media_type="image/png")


@router.get("/metrics", response_model=MetricsOut)
def get_metrics(job: OwnedJob) -> MetricsOut:
    """mIoU and per-class IoU of each evaluation stage reached so far (ground truth needed)."""
    return MetricsOut(
        job_id=job.id,
        state=job.state,
        has_ground_truth=job.dataset.gt_count > 0,
        stages=stage_metrics_out(job),
    )
