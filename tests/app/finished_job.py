"""Jobs moved on as a worker would, for tests of the routes that read them without running a pipeline.

The job is created over HTTP like any other. `finish_job` then does what a worker does when a run
ends: marks the row succeeded and leaves the files the result routes read in its run directory
(the final masks, the CAMs, the export archive), a selection row per tag of each image, and one
dropped image.
`start_job` does what a worker does when it picks a job up.
`add_segmenter` leaves the segmenter a train_seg stage trains (random weights), for prediction runs and
downloads, and
`run_queued_tasks` does here, in this process, what a worker does with the messages in the queue.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select

from app.db import create_db_engine, make_sessionmaker, session_scope
from app.models import Image as ImageRow
from app.models import Job, JobState, PredictionRun, Selection, utcnow
from app.queue import BUILD_ARCHIVE, BUILD_ONNX_MODEL, BUILD_PREDICTION_ARCHIVE, RUN_JOB, RUN_PREDICTION
from app.settings import Settings
from app.storage import dataset_dir, run_layout
from ml.data.palette import VOC_PALETTE, save_mask_png
from ml.spec.config import config_from_dict
from ml.spec.layout import CHECKPOINT, save_cams
from ml.spec.registry import final_masks_stage
from tests.app.service import take_queued_tasks
from worker.archives import build_archive, build_onnx_model, build_prediction_archive
from worker.lease import claim
from worker.predictions import run_prediction

SEGMENTER_ARCH = "lraspp_mobilenet_v3_large"  # the smallest the segmenter module builds


def finish_job(settings: Settings, job_id: str, failed_image: str) -> None:
    """Mark the job succeeded with results for every image of its dataset but `failed_image`."""
    engine = create_db_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        job = session.get(Job, job_id)
        config = config_from_dict(job.config)
        layout = run_layout(settings, job_id)
        folder = dataset_dir(settings, job.dataset.path)
        images = session.scalars(select(ImageRow).where(ImageRow.dataset_id == job.dataset_id)).all()
        for image in images:
            if image.image_id != failed_image:
                _write_results(layout, config, image, folder / image.file, job.dataset.classes)
                session.add_all(_selections(job, image))
        for export_format in config.export.formats:
            layout.archive(export_format).parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(layout.archive(export_format), "w") as archive:
                archive.writestr("labelmap.txt", "background:0,0,0::\n")
        job.state, job.progress = JobState.succeeded, 1.0
        job.started_at = job.finished_at = utcnow()
        job.failed_images = {failed_image: "not a decodable image"}
    engine.dispose()


def _selections(job: Job, image: ImageRow) -> list[Selection]:
    return [
        Selection(
            job_id=job.id,
            image_id=image.image_id,
            label=job.dataset.classes.index(tag) + 1,
            class_name=tag,
            candidates=[tag, "thing"],
            scores=[0.75, 0.25],
            chosen=tag,
        )
        for tag in image.tags
    ]


def _write_results(layout, config, image: ImageRow, image_file, classes: list[str]) -> None:
    with Image.open(image_file) as picture:
        width, height = picture.size
    labels = [classes.index(tag) + 1 for tag in image.tags]
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 2, : width // 2] = labels[0]
    mask_path = layout.mask(final_masks_stage(config), image.image_id)
    mask_path.parent.mkdir(parents=True, exist_ok=True)
    save_mask_png(mask, mask_path)
    cams = np.random.default_rng(0).random((len(labels), height, width), dtype=np.float32)
    layout.cams(image.image_id).parent.mkdir(parents=True, exist_ok=True)
    save_cams(layout.cams(image.image_id), np.array(labels), cams, cams[:, ::4, ::4])


def start_job(settings: Settings, job_id: str) -> None:
    """Mark the job running, as a worker that picked it up would (and none will ever finish it)."""
    engine = create_db_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        job = session.get(Job, job_id)
        job.state, job.started_at, job.heartbeat_at = JobState.running, utcnow(), utcnow()
    engine.dispose()


def add_segmenter(settings: Settings, job_id: str) -> None:
    """Leave in the job's run directory the segmenter a train_seg stage would, with random weights, and
    its hash in the job's row, as a worker records it."""
    engine = create_db_engine(settings.database_url)
    with session_scope(make_sessionmaker(engine)) as session:
        job = session.get(Job, job_id)
        path = run_layout(settings, job_id).segmenter
        sha256 = save_random_segmenter(path, job.dataset.classes, job.config)
        job.checkpoints = {**job.checkpoints, "train_seg": {CHECKPOINT: sha256}}
    engine.dispose()


def save_random_segmenter(path: Path, classes: list[str], config: dict) -> str:
    """A segmenter checkpoint as train_seg writes it, for `classes`, with random weights; returns its sha256."""
    from ml.models.segmenter import build_segmenter, save_segmenter

    model, weights = build_segmenter(SEGMENTER_ARCH, len(classes) + 1, "random")
    # Untrained, the head's random biases outweigh the features and every pixel gets one label;
    # without them the labels follow the image, so that tests comparing label maps compare something.
    for head in (model.classifier.low_classifier, model.classifier.high_classifier):
        head.bias.data.zero_()
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_segmenter(path, model, SEGMENTER_ARCH, classes, classes, VOC_PALETTE, config, weights)


def run_queued_tasks(settings: Settings) -> list[str]:
    """Take every message off the queue and do here what a worker does with it; returns the task names.
    A job's run is skipped: the tests finish their jobs with `finish_job`."""
    engine = create_db_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    tasks = take_queued_tasks(settings)
    for task, kwargs in tasks:
        if task == RUN_PREDICTION:
            lease = claim(sessions, settings, kwargs["prediction_id"], worker="test", table=PredictionRun)
            if lease is not None:
                run_prediction(lease)
        elif task == BUILD_PREDICTION_ARCHIVE:
            build_prediction_archive(sessions, settings, **kwargs)
        elif task == BUILD_ARCHIVE:
            build_archive(sessions, settings, **kwargs)
        elif task == BUILD_ONNX_MODEL:
            build_onnx_model(sessions, settings, **kwargs)
        else:
            assert task == RUN_JOB, task
    engine.dispose()
    return [task for task, _ in tasks]
