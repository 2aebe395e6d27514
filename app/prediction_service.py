"""Prediction runs: new images labelled by a succeeded job's trained segmenter (train_seg), on a worker.

An upload is checked as a dataset upload is, by the same code: the size cap while it streams
(app.storage), a zip extracted by ml.data.archive.safe_extract (member count, sizes and compression
ratio measured while extracting; names that stay inside the folder; no links, devices or pipes), then
every image decoded under the pixel cap (ml.data.images). Unlike a dataset upload, an image that fails
is listed in the run's failed_images and the others are labelled; only an upload without one usable
image is refused (422). The images stay in the run's own folder for the worker: the run's id is made
here, and every image path is one that safe_extract (or plain_file_name, for a lone image) let through.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

from celery import Celery
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import decide_serially, serializable
from app.errors import ApiError
from app.models import ApiKey, Job, JobState, PredictionRun, new_id
from app.pagination import paginate
from app.queue import send_run_prediction
from app.schemas import PredictionOut
from app.settings import Settings
from app.storage import new_upload_path, prediction_layout, remove_path, run_layout, upload_done
from ml.data.archive import ArchiveError, safe_extract
from ml.data.loose_images import LooseImage, check_images, name_images, plain_file_name, visible_files

log = logging.getLogger("pole.api")

UPLOAD_WHAT = "an image (JPEG, PNG, BMP or WEBP) or a .zip of images"


def require_segmenter(settings: Settings, job: Job) -> None:
    """Refuse (409), saying how to get one, unless the job has succeeded with a trained segmenter."""
    if job.state != JobState.succeeded:
        raise ApiError(
            409,
            f"job is {job.state}; predictions use the segmenter a job trains, once it has succeeded with "
            f"train_seg.enabled (GET /v1/jobs/{job.id})",
        )
    if not run_layout(settings, job.id).segmenter.is_file():
        raise ApiError(
            409,
            "this job trained no segmenter to label images with; run a job whose config sets "
            '{"train_seg": {"enabled": true}} (POST /v1/jobs) and ask that one for predictions',
        )


def create_prediction(
    session: Session, settings: Settings, celery: Celery, *, owner: ApiKey, job: Job, upload: Path, name: str
) -> PredictionRun:
    """Check the uploaded image or zip at `upload`, keep its images and queue their labelling by the job's
    segmenter. Refusals are ApiErrors and leave no files and no rows; `upload` is the caller's to remove."""
    staging = new_upload_path(settings, ".d")
    run_id = new_id()
    layout = prediction_layout(settings, run_id)
    try:
        images, failed = _stage_images(settings, upload, name, staging)
        layout.root.mkdir(parents=True)
        os.rename(staging, layout.inputs)
    except BaseException:
        remove_path(staging)
        remove_path(layout.root)
        raise
    upload_done(staging)
    row = PredictionRun(
        id=run_id,
        owner_id=owner.id,
        job_id=job.id,
        name=name[:255],
        images={image.id: image.name for image in images},
        image_count=len(images),
        failed_images=failed,
        state=JobState.queued,
    )
    try:
        run = decide_serially(session, lambda _attempt: _insert(session, row))
    except BaseException:
        remove_path(layout.root)
        raise
    try:
        send_run_prediction(celery, run.id)  # only after the commit: the worker must find the row
    except BrokerUnreachable as err:
        log.error("could not enqueue prediction run %s: %s", run.id, err)
        session.delete(run)
        session.commit()
        remove_path(layout.root)
        raise ApiError(503, "the job queue is unreachable right now; nothing was created, try again") from err
    return run


def _stage_images(
    settings: Settings, upload: Path, name: str, staging: Path
) -> tuple[list[LooseImage], dict[str, str]]:
    """The uploaded images, unpacked into `staging` and checked, and {file: reason} of those that fail."""
    if name.lower().endswith(".zip") or zipfile.is_zipfile(upload):
        try:
            safe_extract(upload, staging, settings.archive_limits())
        except ArchiveError as err:
            raise ApiError(400, f"archive refused: {err}") from err
    else:
        staging.mkdir()
        os.rename(upload, staging / plain_file_name(name))
    images, failed = name_images(visible_files(staging))
    failed |= check_images(images, settings.max_image_pixels)
    if all(image.name in failed for image in images):
        found = "; ".join(f"{file}: {reason}" for file, reason in sorted(failed.items())[:3]) or "no files"
        raise ApiError(
            422,
            f"no image to label in the upload ({found}); send {UPLOAD_WHAT}",
            problems=[{"file": file, "line": None, "message": reason} for file, reason in sorted(failed.items())],
        )
    return images, failed


def _insert(session: Session, row: PredictionRun) -> PredictionRun:
    """Store the run, unless its job was deleted meanwhile (409).

    Decided in a serializable transaction, as a job on a dataset is: a dataset deleted with its jobs at
    the same moment either commits first (the job is then gone here) or finds this run and refuses."""
    serializable(session)
    if session.scalar(select(Job.id).where(Job.id == row.job_id)) is None:
        raise ApiError(409, _deleted_meanwhile(row.job_id))
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # SQLite checks the foreign key: the job went between our read and our insert
        session.rollback()
        raise ApiError(409, _deleted_meanwhile(row.job_id)) from None
    return row


def _deleted_meanwhile(job_id: str) -> str:
    return f"job {job_id!r} was deleted (with its dataset) while the images were uploaded; nothing was created"


def predictions_page(session: Session, job: Job, owner: ApiKey, cursor: str | None, limit: int) -> dict:
    """One page of the job's prediction runs made by `owner`, newest first."""
    query = select(PredictionRun).where(PredictionRun.job_id == job.id, PredictionRun.owner_id == owner.id)
    rows, next_cursor = paginate(
        session, query, (PredictionRun.created_at, PredictionRun.id), cursor, limit, descending=True
    )
    return {"items": [prediction_out(row) for row in rows], "next_cursor": next_cursor}


def prediction_out(run: PredictionRun) -> PredictionOut:
    base = f"/v1/jobs/{run.job_id}/predictions/{run.id}"
    derived = {
        "classes": run.job.dataset.classes,
        "links": {"self": base, "archive": f"{base}/archive"},
    }
    columns = {name: getattr(run, name) for name in PredictionOut.model_fields if name not in derived}
    return PredictionOut(**columns, **derived)


def prediction_file(settings: Settings, run: PredictionRun, image_id: str, what: str) -> Path:
    """The mask or overlay (`what`) the run made of image `image_id`; refusals say why there is none."""
    if run.state != JobState.succeeded:
        raise ApiError(
            409,
            f"prediction run is {run.state}; its {what}s exist once it has succeeded "
            f"(GET /v1/jobs/{run.job_id}/predictions/{run.id})",
        )
    file = run.images.get(image_id)
    if file is None:
        raise ApiError(404, f"no image {image_id!r} in this prediction run; an image's id is its file's stem")
    if file in run.failed_images:
        raise ApiError(404, f"image {image_id!r} ({file}) could not be labelled: {run.failed_images[file]}")
    layout = prediction_layout(settings, run.id)
    path = layout.mask(image_id) if what == "mask" else layout.overlay(image_id)
    if not path.is_file():
        raise ApiError(410, f"the {what} of image {image_id!r} is missing from the data directory")
    return path
