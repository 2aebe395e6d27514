"""Which attempt owns a job: the lease, a token stored on the job row when an attempt claims it.

Every write of an attempt is conditional on its lease. A worker presumed dead and replaced (worker.reaper,
worker.child_death) finds its lease gone at its next write or cancel check and stops without touching
the job again, so no attempt ever overwrites another and nothing is recorded twice.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.models import Job, JobState, utcnow
from app.settings import Settings

log = logging.getLogger("pole.worker")

# Worth a retry of the whole task: the database went away for a moment. Anything else a stage
# raises (a bug, a bad config, a corrupt checkpoint) would fail the same way again.
TRANSIENT_ERRORS = (OperationalError, DisconnectionError)

CANCEL_CHECK_SECONDS = 0.2  # stages check between batches; this bounds the reads, not the latency


class LeaseLost(Exception):
    """This attempt no longer owns the job (it was requeued as stale, or cancelled by the reaper)."""


def attempt_token(hostname: str, pid: int, task_id: str, retries: int) -> str:
    """The lease of the attempt that the pool process `pid` of worker `hostname` makes for one delivery of a task.

    Derived rather than random so that the worker's main process, which sees that pool process die, can
    name the lease it held without hearing from it. A pool process runs one attempt at a time, so two
    attempts alive at once never share a token.
    """
    return uuid.uuid5(uuid.NAMESPACE_OID, f"pole/{hostname}/{pid}/{task_id}/{retries}").hex


def claim(
    sessions: sessionmaker[Session],
    settings: Settings,
    job_id: str,
    worker: str,
    resume_lease: str | None = None,
    token: str | None = None,
) -> Lease | None:
    """Take the job for a new attempt (holding `token`, a random one by default), or return None when it
    is not ours to run.

    Claimable: a queued job; a running one whose heartbeat went stale; or our own, when the task
    is retried after a transient error (`resume_lease`). Never past `max_attempts`.
    """
    token = token or uuid.uuid4().hex
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_seconds)
    claimable = or_(
        Job.state == JobState.queued,
        (Job.state == JobState.running) & ((Job.lease == resume_lease) | (Job.heartbeat_at < stale_before)),
    )
    with sessions() as session, session.begin():
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempts < settings.max_attempts, claimable)
            .values(
                state=JobState.running,
                lease=token,
                worker=worker,
                attempts=Job.attempts + 1,
                heartbeat_at=now,
                error=None,
                message="starting",
            )
        )
        if result.rowcount != 1:
            state = session.scalar(select(Job.state).where(Job.id == job_id))
            log.info("job %s not claimed (state: %s); nothing to do", job_id, state or "no such job")
            return None
        session.execute(update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=now))
    return Lease(sessions, settings, job_id, token)


class Lease:
    """One attempt's hold on a job: the only way the attempt writes to the job row."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings, job_id: str, token: str):
        self.sessions = sessions
        self.settings = settings
        self.job_id = job_id
        self.token = token
        self.lost = threading.Event()
        self._cancel_checked = 0.0
        self._cancelling = False

    def write(self, **values) -> None:
        """Update the job row while the job is live and the lease still ours; LeaseLost otherwise."""
        with self.sessions() as session, session.begin():
            result = session.execute(
                update(Job)
                .where(
                    Job.id == self.job_id,
                    Job.lease == self.token,
                    Job.state.in_([JobState.running, JobState.cancelling]),
                )
                .values(**values)
            )
        if result.rowcount != 1:
            self.lost.set()
            raise LeaseLost(self.job_id)

    def beat(self) -> None:
        self.write(heartbeat_at=utcnow())

    def end(self, session: Session, state: JobState, **values) -> bool:
        """Give the job its final state and release the lease, in the caller's transaction; False when
        the lease was lost (the job is another attempt's now, and nothing is written)."""
        result = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.lease == self.token)
            .values(state=state, lease=None, finished_at=utcnow(), **values)
        )
        return result.rowcount == 1

    def should_cancel(self) -> bool:
        """Whether the job was asked to cancel; raises LeaseLost once the job is no longer ours."""
        if self.lost.is_set():
            raise LeaseLost(self.job_id)
        now = time.monotonic()
        if not self._cancelling and now - self._cancel_checked >= CANCEL_CHECK_SECONDS:
            self._cancel_checked = now
            with self.sessions() as session:
                state, lease = session.execute(select(Job.state, Job.lease).where(Job.id == self.job_id)).one()
            if lease != self.token:
                self.lost.set()
                raise LeaseLost(self.job_id)
            self._cancelling = state == JobState.cancelling
        return self._cancelling


class Heartbeat(threading.Thread):
    """Keeps the job's heartbeat fresh while a stage computes for long between progress reports."""

    def __init__(self, lease: Lease, interval: float):
        super().__init__(name=f"heartbeat-{lease.job_id}", daemon=True)
        self.lease = lease
        self.interval = interval
        self._stop_event = threading.Event()

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.lease.beat()
            except LeaseLost:
                return  # the pipeline sees lease.lost at its next cancel check and stops
            except TRANSIENT_ERRORS as err:
                log.warning("job %s: heartbeat not written (%s); retrying", self.lease.job_id, err)
