"""The Celery task: a job id in, the job row and run directory updated. Thin on purpose; the work
is in worker/jobs.py and ml.pipeline."""

from __future__ import annotations

import logging

from celery import Task, shared_task
from sqlalchemy.orm import Session, sessionmaker

from app.db import create_db_engine, make_sessionmaker
from app.queue import RUN_JOB
from app.settings import Settings
from worker.jobs import TRANSIENT_ERRORS, claim

log = logging.getLogger("pole.worker")


class JobTask(Task):
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


@shared_task(bind=True, base=JobTask, name=RUN_JOB, max_retries=5)
def run_job(self: JobTask, job_id: str, lease: str | None = None) -> None:
    run = claim(self.sessions, self.settings, job_id, worker=self.request.hostname or "worker", resume_lease=lease)
    if run is None:
        return
    try:
        run.execute()
    except TRANSIENT_ERRORS as err:
        log.warning("job %s: transient error (%s); retrying from the last finished stage", job_id, err)
        raise self.retry(exc=err, kwargs={"job_id": job_id, "lease": run.lease}, countdown=5) from err
