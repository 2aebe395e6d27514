"""What a job produced: the mask archive, the chosen [CLS] words, per-image masks and overlays, metrics,
and the segmenter trained on the masks."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from app.archives import archive_response, job_archive, pending_response
from app.deps import CeleryDep, ExportFormatParam, OwnedJob, PageParams, SessionDep, SettingsDep
from app.errors import ApiError
from app.job_service import stage_metrics_out
from app.model_service import ModelFormat, job_model
from app.models import Job, JobState
from app.openapi import BINARY, archive_responses, error_responses
from app.result_service import job_image, job_image_out, job_images_page, selections_page
from app.schemas import ArchivePendingOut, JobImageOut, MetricsOut, Page, SelectionOut
from app.storage import dataset_dir, run_layout
from ml.spec.config import config_from_dict
from ml.spec.registry import final_masks_stage

router = APIRouter(prefix="/v1/jobs/{job_id}", tags=["results"])

# A result file exists once the job has succeeded (409 before), for images it did not drop (404).
PNG = {200: {"content": {"image/png": BINARY}}, **error_responses(409)}


def _require_succeeded(job: Job, what: str) -> None:
    if job.state != JobState.succeeded:
        raise ApiError(409, f"job is {job.state}; the {what} exists once it has succeeded (GET /v1/jobs/{job.id})")


@router.get("/archive", response_class=FileResponse, responses=archive_responses("the job did not export"))
def get_archive(
    job: OwnedJob, settings: SettingsDep, celery: CeleryDep, export_format: ExportFormatParam = None
) -> Response:
    """The final masks in an export format's layout (CVAT "Segmentation mask 1.1" by default) with
    selections.csv, failed_images.csv, metrics.json and config.json, as a .zip. A format the job did
    not export is built from the finished run by a worker: 202 with Retry-After until it is ready,
    then the zip, kept for every later request."""
    _require_succeeded(job, "archive")
    return archive_response(job_archive(settings, celery, job, export_format), "this job's run")


@router.get(
    "/model",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": BINARY}},
        202: {"model": ArchivePendingOut, "description": "the ONNX export, being built"},
        **error_responses(409, 410, 503),
    },
)
def get_model(
    job: OwnedJob,
    settings: SettingsDep,
    celery: CeleryDep,
    model_format: Annotated[
        ModelFormat,
        Query(
            alias="format",
            description="pytorch: the checkpoint, which loads with torch and torchvision alone; onnx: the "
            "same network as ONNX, built on the first request for it",
        ),
    ] = "pytorch",
) -> Response:
    """The segmentation network the job's train_seg stage trained on its pseudo masks, to label images
    elsewhere (README: "Use the model elsewhere"). The checkpoint holds the class names, the palette
    and the input normalisation; its ETag is the SHA-256 the job recorded. The ONNX export takes the
    normalised (N, 3, H, W) image and gives the (N, K + 1, H, W) logits, with the same facts in its
    metadata; a worker builds it from the checkpoint: 202 with Retry-After until it is ready, then the
    file, kept for every later request."""
    model = job_model(settings, celery, job, model_format)
    if model.path is None:
        return pending_response("the ONNX export of this job's segmenter is being built; ask again in a few seconds")
    etag = {"ETag": f'"{model.sha256}"'} if model.sha256 else None
    return FileResponse(model.path, media_type="application/octet-stream", filename=model.download_name, headers=etag)


@router.get("/selections", response_model=Page[SelectionOut], responses=error_responses(422))
def list_selections(
    job: OwnedJob,
    session: SessionDep,
    page: PageParams,
    image: str | None = None,
    class_name: Annotated[
        str | None, Query(alias="class", description="one of the dataset's classes, in any case")
    ] = None,
) -> dict:
    """The word chosen for each (image, class), with every candidate's CLIP score. A `class` the
    job's dataset does not have is refused (422) with the list of its classes."""
    return selections_page(session, job, *page, image=image, class_name=class_name)


@router.get("/images", response_model=Page[JobImageOut])
def list_job_images(job: OwnedJob, session: SessionDep, page: PageParams) -> dict:
    """Every image of the job's dataset in upload order, as GET /v1/jobs/{job_id}/images/{image_id}
    shows each. The result links appear once the job has succeeded, on the images it did not drop."""
    return job_images_page(session, job, *page)


@router.get("/images/{image_id}", response_model=JobImageOut)
def get_job_image(image_id: str, job: OwnedJob, session: SessionDep) -> JobImageOut:
    """One image's tags, chosen words, and links to its mask and overlays."""
    return job_image_out(session, job, image_id)


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
    job_image(session, job, image_id)
    return FileResponse(
        _result_file(job, image_id, _final_mask(settings, job, image_id), "mask"), media_type="image/png"
    )


@router.get("/images/{image_id}/overlay.png", response_class=Response, responses=PNG)
def get_overlay(image_id: str, job: OwnedJob, session: SessionDep, settings: SettingsDep) -> Response:
    """The image with its pseudo mask blended over it, and a legend of the class colours under it."""
    from ml.data.images import read_image, read_mask
    from ml.data.overlays import mask_overlay_png

    row = job_image(session, job, image_id)
    mask = _result_file(job, image_id, _final_mask(settings, job, image_id), "mask")
    image = read_image(dataset_dir(settings, job.dataset.path) / row.file)
    return Response(mask_overlay_png(image, read_mask(mask), job.dataset.classes), media_type="image/png")


@router.get("/images/{image_id}/cams.png", response_class=Response, responses=PNG)
def get_cams(image_id: str, job: OwnedJob, session: SessionDep, settings: SettingsDep) -> Response:
    """One heat map per tagged class: the class activation maps the masks grew from (a map that is
    zero everywhere shows the image faded, with "empty CAM" written in it)."""
    from ml.data.images import read_image
    from ml.data.overlays import cam_heatmaps_png

    row = job_image(session, job, image_id)
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
