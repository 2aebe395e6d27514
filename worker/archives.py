"""Building the archive of a succeeded job (or prediction run) in a format its run did not export, as
its owner asked (GET /v1/jobs/{id}/archive?format=..., GET .../predictions/{id}/archive?format=...,
app.archives). The zip lands beside the run's own exports; a failure is written beside them for the
API to report. Either way the request marker goes. A job's segmenter exported to ONNX
(GET /v1/jobs/{id}/model?format=onnx, app.model_service) is built the same way, beside its checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.models import Job, JobState, PredictionRun
from app.settings import Settings
from app.storage import dataset_dir, prediction_layout, run_layout
from worker.predictions import uploaded_images

log = logging.getLogger("pole.worker")


def build_archive(sessions: sessionmaker[Session], settings: Settings, job_id: str, export_format: str) -> None:
    # Imported here: torch loads in the pool process that builds, never in the worker's main process.
    from ml.data.readers import read_dataset
    from ml.runtime import StageContext
    from ml.spec.config import config_from_dict
    from ml.stages.export import add_format

    layout = run_layout(settings, job_id)
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.succeeded:
            return  # deleted, or never finished: nothing to build from
        config = config_from_dict(job.config)
        data_path = dataset_dir(settings, job.dataset.path)
        # The run's dropped images and those the reader dropped after it: the job row has both.
        failed_images = dict(job.failed_images)

    def build() -> None:
        dataset = read_dataset(data_path, skip_bad=True, max_pixels=settings.max_image_pixels)
        ctx = StageContext(dataset, layout.root, config, stage="export", failed_images=failed_images)
        add_format(ctx, export_format)

    what = f"job {job_id}'s {export_format} archive"
    record_build(what, build, layout.archive_request(export_format), layout.archive_failure(export_format))


def build_onnx_model(sessions: sessionmaker[Session], settings: Settings, job_id: str) -> None:
    # Imported here, as above.
    from ml.models.segmenter_onnx import export_onnx

    layout = run_layout(settings, job_id)
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != JobState.succeeded:
            return  # deleted, or never finished: nothing to build from

    def build() -> None:
        check = export_onnx(layout.segmenter, layout.segmenter_onnx)
        log.info("job %s: the ONNX export reproduces PyTorch: %s", job_id, check)

    what = f"job {job_id}'s ONNX model"
    record_build(what, build, layout.segmenter_onnx_request, layout.segmenter_onnx_failure)


def record_build(what: str, build: Callable[[], None], request: Path, failure: Path) -> None:
    """Run `build`, writing to `failure` why it failed, for the API to answer every later request with.
    Either way the `request` marker goes, which ends the API's 202 answers."""
    try:
        build()
        log.info("built %s", what)
    except Exception as err:  # whatever went wrong is the owner's answer, not a retry
        log.exception("building %s failed", what)
        failure.write_text(f"{type(err).__name__}: {err}")
    finally:
        request.unlink(missing_ok=True)


def build_prediction_archive(
    sessions: sessionmaker[Session], settings: Settings, prediction_id: str, export_format: str
) -> None:
    # Imported here, as above.
    from ml.prediction import write_archive

    layout = prediction_layout(settings, prediction_id)
    with sessions() as session:
        run = session.get(PredictionRun, prediction_id)
        if run is None or run.state != JobState.succeeded:
            return  # deleted, or never finished: nothing to build from
        images = uploaded_images(run, layout)
        failed, label_names = dict(run.failed_images), list(run.label_names)

    def build() -> None:
        write_archive(layout, export_format, label_names, images, failed)

    what = f"prediction run {prediction_id}'s {export_format} archive"
    record_build(what, build, layout.archive_request(export_format), layout.archive_failure(export_format))
