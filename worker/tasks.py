"""The Celery tasks: a job id in, the job row and run directory updated; a prediction run's images
labelled by its job's segmenter; a succeeded job's or prediction run's archive built in another
export format, and a job's segmenter exported to ONNX. Thin on purpose; the work is in
worker/attempt.py and ml.pipeline, worker/predictions.py and worker/archives.py."""

from __future__ import annotations

import logging
import os

from celery import Task, shared_task
from sqlalchemy.orm import Session, sessionmaker

import worker.process_setup  # noqa: F401  (connects the job process's setup to Celery's signals)
from app.db import create_db_engine, make_sessionmaker
from app.dispatch import send_next_jobs_after_end
from app.models import PredictionRun
from app.queue import BUILD_ARCHIVE, BUILD_ONNX_MODEL, BUILD_PREDICTION_ARCHIVE, RUN_JOB, RUN_PREDICTION
from app.settings import Settings
from worker.archives import build_archive, build_onnx_model, build_prediction_archive
from worker.attempt import execute
from worker.child_death import JobRequest
from worker.lease import TRANSIENT_ERRORS, attempt_token, claim
from worker.predictions import run_prediction

log = logging.getLogger("pole.worker")


class DatabaseTask(Task):
    """Holds this worker process's database sessions (one engine per process, made after the fork)."""

    _sessions: sessionmaker[Session] | None = None

    @property
    def settings(self) -> Settings:
        return self.app.conf.pole_settings

    @property
    def sessions(self) -> sessionmaker[Session]:
        if self._sessions is None:
            self._sessions = make_sessionmaker(create_db_engine(self.settings.database_url))
        return self._sessions


class JobTask(DatabaseTask):
    """A run of a job, whose pool process dying under it requeues the job (worker.child_death)."""

    Request = JobRequest


@shared_task(bind=True, base=JobTask, name=RUN_JOB, max_retries=5)
def run_job(self: JobTask, job_id: str, lease: str | None = None) -> None:
    hostname = self.request.hostname or "worker"
    token = attempt_token(hostname, os.getpid(), self.request.id, self.request.retries)
    held = claim(self.sessions, self.settings, job_id, worker=hostname, resume_lease=lease, token=token)
    if held is None:
        return
    try:
        execute(held)
    except TRANSIENT_ERRORS as err:
        log.warning("job %s: transient error (%s); retrying from the last finished stage", job_id, err)
        raise self.retry(exc=err, kwargs={"job_id": job_id, "lease": held.token}, countdown=5) from err
    # Ended (or taken over by another attempt, which changes nothing): the slot may be free for the key's next job.
    send_next_jobs_after_end(self.sessions, self.settings, self.app, job_id)


@shared_task(bind=True, base=DatabaseTask, name=BUILD_ARCHIVE)
def build_archive_task(self: DatabaseTask, job_id: str, export_format: str) -> None:
    build_archive(self.sessions, self.settings, job_id, export_format)


@shared_task(bind=True, base=DatabaseTask, name=BUILD_ONNX_MODEL)
def build_onnx_model_task(self: DatabaseTask, job_id: str) -> None:
    build_onnx_model(self.sessions, self.settings, job_id)


# A prediction run whose pool process dies is left to the reaper (no JobRequest): it starts over anyway.
@shared_task(bind=True, base=DatabaseTask, name=RUN_PREDICTION, max_retries=5)
def run_prediction_task(self: DatabaseTask, prediction_id: str, lease: str | None = None) -> None:
    worker = self.request.hostname or "worker"
    held = claim(self.sessions, self.settings, prediction_id, worker=worker, resume_lease=lease, table=PredictionRun)
    if held is None:
        return
    try:
        run_prediction(held)
    except TRANSIENT_ERRORS as err:
        log.warning("prediction run %s: transient error (%s); retrying", prediction_id, err)
        kwargs = {"prediction_id": prediction_id, "lease": held.token}
        raise self.retry(exc=err, kwargs=kwargs, countdown=5) from err


@shared_task(bind=True, base=DatabaseTask, name=BUILD_PREDICTION_ARCHIVE)
def build_prediction_archive_task(self: DatabaseTask, prediction_id: str, export_format: str) -> None:
    build_prediction_archive(self.sessions, self.settings, prediction_id, export_format)
