"""/v1/jobs/{job_id}/predictions: new images labelled by the job's trained segmenter, no tags needed.

Upload (one image or a zip, checked as a dataset upload is), list, follow, and the results: an archive
in any export format, and each image's mask and overlay. See app/prediction_service.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from app.archives import archive_response, prediction_archive
from app.deps import (
    CeleryDep,
    CurrentKey,
    ExportFormatParam,
    OwnedJob,
    OwnedPrediction,
    PageParams,
    SessionDep,
    SettingsDep,
)
from app.errors import ApiError
from app.models import JobState
from app.openapi import BINARY, archive_responses, error_responses
from app.prediction_service import (
    UPLOAD_WHAT,
    create_prediction,
    prediction_file,
    prediction_out,
    predictions_page,
    require_segmenter,
)
from app.schemas import Page, PredictionOut
from app.storage import new_upload_path, receive_file, remove_path

router = APIRouter(prefix="/v1/jobs/{job_id}/predictions", tags=["predictions"])

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary", "description": UPLOAD_WHAT}},
                }
            }
        },
    }
}
# A result file exists once the run has succeeded (409 before), for images it labelled (404).
PNG = {200: {"content": {"image/png": BINARY}}, **error_responses(409, 410)}


@router.post(
    "",
    status_code=201,
    response_model=PredictionOut,
    openapi_extra=UPLOAD_BODY,
    responses=error_responses(400, 409, 413, 415, 422, 503),
)
async def post_prediction(
    request: Request, job: OwnedJob, key: CurrentKey, session: SessionDep, settings: SettingsDep, celery: CeleryDep
) -> PredictionOut:
    """Label one image, or a .zip of images, with the segmenter the job trained (a job run with
    train_seg.enabled; 409 otherwise), as the multipart field `file`. The upload is checked as a dataset
    upload is; an image that cannot be used is listed in the run's `failed_images` and the others are
    labelled (422 only when none can be). The labelling runs on a worker: follow the run's `state`."""
    require_segmenter(settings, job)
    upload = new_upload_path(settings, ".upload")
    try:
        name = await receive_file(request, upload, settings.max_upload_bytes, what=UPLOAD_WHAT)
        run = await run_in_threadpool(
            create_prediction, session, settings, celery, owner=key, job=job, upload=upload, name=name
        )
        return await run_in_threadpool(prediction_out, run)
    finally:
        remove_path(upload)


@router.get("", response_model=Page[PredictionOut])
def list_predictions(job: OwnedJob, key: CurrentKey, session: SessionDep, page: PageParams) -> dict:
    """The job's prediction runs, newest first."""
    return predictions_page(session, job, key, *page)


@router.get("/{prediction_id}", response_model=PredictionOut)
def get_prediction(run: OwnedPrediction) -> PredictionOut:
    """The run's state and progress, and the images it could not label: what clients poll while it runs."""
    return prediction_out(run)


@router.get(
    "/{prediction_id}/archive", response_class=FileResponse, responses=archive_responses("the run did not write")
)
def get_prediction_archive(
    run: OwnedPrediction, settings: SettingsDep, celery: CeleryDep, export_format: ExportFormatParam = None
) -> Response:
    """The masks in an export format's layout, with failed_images.csv, as a .zip. A format the run did
    not write is built by a worker: 202 with Retry-After until it is ready, then the zip."""
    if run.state != JobState.succeeded:
        raise ApiError(409, f"prediction run is {run.state}; its archive exists once it has succeeded")
    return archive_response(prediction_archive(settings, celery, run, export_format), "this prediction run")


@router.get("/{prediction_id}/images/{image_id}/mask.png", response_class=FileResponse, responses=PNG)
def get_prediction_mask(image_id: str, run: OwnedPrediction, settings: SettingsDep) -> FileResponse:
    """The image's mask as a palette PNG of its size (pixel values are labels: 0 background, k the
    run's `classes[k - 1]`). An image's id is its file's stem."""
    return FileResponse(prediction_file(settings, run, image_id, "mask"), media_type="image/png")


@router.get("/{prediction_id}/images/{image_id}/overlay.png", response_class=FileResponse, responses=PNG)
def get_prediction_overlay(image_id: str, run: OwnedPrediction, settings: SettingsDep) -> FileResponse:
    """The image with its mask blended over it, and a legend of the class colours under it."""
    return FileResponse(prediction_file(settings, run, image_id, "overlay"), media_type="image/png")
