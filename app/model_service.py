"""A job's trained segmenter as a file to use elsewhere: the checkpoint its train_seg stage wrote, which
loads with torch and torchvision alone, or that network exported to ONNX. The API runs no ML code, so
the ONNX file is built from the checkpoint by a worker on the first request for it, as archives in
other formats are (app.archives), and kept beside the checkpoint for every later request.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

from celery import Celery

from app.archives import queue_build
from app.errors import ApiError
from app.models import Job, JobState
from app.queue import send_build_onnx_model
from app.settings import Settings
from app.storage import run_layout
from ml.spec.layout import CHECKPOINT
from ml.spec.registry import STAGE_BY_NAME

ModelFormat = Literal["pytorch", "onnx"]


@dataclass(frozen=True)
class JobModel:
    path: Path | None  # None while a worker builds it
    download_name: str
    sha256: str | None  # the checkpoint's, as the job recorded it when it ran


def job_model(settings: Settings, celery: Celery, job: Job, model_format: ModelFormat) -> JobModel:
    """The segmenter of a succeeded job that trained one, as a file in `model_format`, queueing the
    ONNX export's build on the first request for it. Refusals are ApiErrors."""
    if job.state != JobState.succeeded:
        raise ApiError(409, f"job is {job.state}; its segmenter exists once it has succeeded (GET /v1/jobs/{job.id})")
    layout = run_layout(settings, job.id)
    if not layout.stage_done("train_seg"):
        raise ApiError(
            409,
            "this job trained no segmenter: its run had no train_seg stage, which runs when "
            f"{STAGE_BY_NAME['train_seg'].enabled_when}; create a job with that config to get one",
        )
    if not layout.segmenter.is_file():
        raise ApiError(410, "the model file is missing from the data directory; run the job again")
    if model_format == "pytorch":
        recorded = (job.checkpoints or {}).get("train_seg", {}).get(CHECKPOINT)
        return JobModel(layout.segmenter, f"pole_segmenter_{job.id}.pt", recorded)
    onnx = JobModel(layout.segmenter_onnx, f"pole_segmenter_{job.id}.onnx", None)
    if onnx.path.is_file():
        return onnx
    queue_build(
        "the ONNX export of this job's segmenter",
        layout.segmenter_onnx_request,
        layout.segmenter_onnx_failure,
        partial(send_build_onnx_model, celery, job.id),
    )
    return replace(onnx, path=None)
