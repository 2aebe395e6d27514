"""A job whose pool process died under it (killed for lack of memory, SIGKILL, a crash in native code)
is requeued at once by the worker's main process, instead of showing `running` until the reaper finds
its heartbeat stale.

No Celery signal fires in the main process for that death: task_failure is skipped because the message
is rejected for redelivery (late acks with task_reject_on_worker_lost), task_revoked is only for revokes,
and worker_process_shutdown runs in the pool process itself, which a SIGKILL stops before it runs anything. What
the main process does run is the request's `on_failure`, with billiard's WorkerLostError: JobRequest hooks
in there. (A cold shutdown of the worker ends its pool processes with Terminated instead; the job is then
recovered when the worker starts again, see worker.reaper.)
"""

from __future__ import annotations

import functools
import logging

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import Celery, signals
from celery.worker.request import Request
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.db import create_db_engine, make_sessionmaker
from app.dispatch import send_next_jobs_after_end
from app.models import Job, JobState, utcnow
from app.queue import send_run_job
from app.settings import Settings
from worker.lease import attempt_token

log = logging.getLogger("pole.worker")

# Billiard waits this long for a result the dead process might have sent before reporting the death
# (Celery's default is 10 s). Jobs keep their results in the database, never in task results.
LOST_PROCESS_WAIT_SECONDS = 1.0


@signals.celeryd_init.connect
def _report_lost_processes_sooner(conf, **_kwargs) -> None:
    conf.worker_lost_wait = LOST_PROCESS_WAIT_SECONDS


class JobRequest(Request):
    """A run_job delivery as the worker's main process tracks it."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        error = exc_info.exception
        if isinstance(error, ExceptionWithTraceback):
            error = error.exc
        # Before Celery hands the message back to the broker: the job is queued by the time it is redelivered.
        if isinstance(error, WorkerLostError) and self.worker_pid and self.kwargs.get("job_id"):
            self._release_job(str(error))
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def _release_job(self, death: str) -> None:
        celery = self.task.app
        settings: Settings = celery.conf.pole_settings
        token = attempt_token(
            self.hostname or "worker", self.worker_pid, self.id, self.request_dict.get("retries") or 0
        )
        job_id = self.kwargs["job_id"]
        try:
            release_after_death(_sessions(settings.database_url), settings, celery, job_id, token, death)
        except Exception:  # the main process's loop must go on; the reaper requeues the job once it looks stale
            log.exception("job %s: not requeued after its worker process died; left to the reaper", job_id)


def release_after_death(
    sessions: sessionmaker[Session], settings: Settings, celery: Celery, job_id: str, token: str, death: str
) -> str | None:
    """Requeue (and send again) the job that the dead attempt holding lease `token` was running; fail it
    past `max_attempts`, cancel it if it was cancelling. Returns the action, or None when the job was not
    that attempt's (it died before claiming, after ending, or after losing the job to another attempt)."""
    live = (JobState.running, JobState.cancelling)
    with sessions() as session, session.begin():
        row = session.execute(
            select(Job.state, Job.attempts).where(Job.id == job_id, Job.lease == token, Job.state.in_(live))
        ).one_or_none()
        if row is None:
            return None
        values, action = _release(row.state, row.attempts, settings.max_attempts, death)
        # Compare-and-set on the dead attempt's lease: never a live attempt's job.
        changed = session.execute(
            update(Job).where(Job.id == job_id, Job.lease == token, Job.state == row.state).values(**values)
        ).rowcount
    if not changed:
        return None
    log.warning("job %s: the worker process running it died (%s); %s", job_id, death, action)
    if action == "requeued":
        try:
            send_run_job(celery, job_id)
        except BrokerUnreachable as err:
            # Queued in the database already: the reaper sends it again once it is due.
            log.error("job %s: queue unreachable (%s); the reaper will send it again", job_id, err)
    else:
        send_next_jobs_after_end(sessions, settings, celery, job_id)
    return action


def _release(state: str, attempts: int, max_attempts: int, death: str) -> tuple[dict, str]:
    now = utcnow()
    ended = {"lease": None, "finished_at": now}
    if state == JobState.cancelling:
        return {**ended, "state": JobState.cancelled, "message": "cancelled (its worker process died)"}, "cancelled"
    if attempts >= max_attempts:
        reason = (
            f"the worker process running it died {attempts} times (last: {death}). It may have been killed "
            "for lack of memory; see the worker's log, or retry with smaller batches"
        )
        return {**ended, "state": JobState.failed, "error": reason}, "failed"
    message = f"requeued after the worker process running it died (attempt {attempts} of {max_attempts})"
    # enqueued_at = now: the reaper's clock for sending a requeued job again starts here.
    values = {"state": JobState.queued, "lease": None, "worker": None, "message": message, "enqueued_at": now}
    return values, "requeued"


@functools.cache
def _sessions(database_url: str) -> sessionmaker[Session]:
    # NullPool: no connection stays open in the main process for a forked pool process to inherit.
    return make_sessionmaker(create_db_engine(database_url, poolclass=NullPool))
