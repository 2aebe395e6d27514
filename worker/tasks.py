"""The Celery tasks: a job id in, the job row and run directory updated; and a succeeded job's
archive built in another export format. Thin on purpose; the work is in worker/attempt.py and
ml.pipeline, and in worker/archives.py."""

from __future__ import annotations

import logging
import os

from celery import Task, shared_task
from sqlalchemy.orm import Session, sessionmaker

import worker.process_setup  # noqa: F401  (connects the job process's setup to Celery's signals)
from app.db import create_db_engine, make_sessionmaker
from app.queue import BUILD_ARCHIVE, RUN_JOB
from app.settings import Settings
from worker.archives import build_archive
from worker.attempt import execute
from worker.child_death import JobRequest
from worker.lease import TRANSIENT_ERRORS, attempt_token, claim

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


@shared_task(bind=True, base=DatabaseTask, name=BUILD_ARCHIVE)
def build_archive_task(self: DatabaseTask, job_id: str, export_format: str) -> None:
    build_archive(self.sessions, self.settings, job_id, export_format)
