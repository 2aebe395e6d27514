"""Which attempt owns a job: the lease, a token stored on the job row when an attempt claims it.

Every write of an attempt is conditional on its lease. A worker presumed dead and replaced (worker.reaper,
worker.child_death) finds its lease gone at its next write or cancel check and stops without touching
the job again, so no attempt ever overwrites another and nothing is recorded twice.

A prediction run is held the same way (`table=PredictionRun`): its row has the job's lease columns.
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

from app.models import Job, JobState, PredictionRun, utcnow
from app.settings import Settings

log = logging.getLogger("pole.worker")

# Worth a retry of the whole task: the database went away for a moment. Anything else a stage
# raises (a bug, a bad config, a corrupt checkpoint) would fail the same way again.
TRANSIENT_ERRORS = (OperationalError, DisconnectionError)

CANCEL_CHECK_SECONDS = 0.2  # stages check between batches; this bounds the reads, not the latency

LeasedTable = type[Job] | type[PredictionRun]


class LeaseLost(Exception):
    """This attempt no longer owns its row (it was requeued as stale, or cancelled by the reaper)."""


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
    row_id: str,
    worker: str,
    resume_lease: str | None = None,
    token: str | None = None,
    table: LeasedTable = Job,
) -> Lease | None:
    """Take the job (or the row of `table`) for a new attempt (holding `token`, a random one by default),
    or return None when it is not ours to run.

    Claimable: a queued job; a running one whose heartbeat went stale; or our own, when the task
    is retried after a transient error (`resume_lease`). Never past `max_attempts`.
    """
    token = token or uuid.uuid4().hex
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.stale_after_seconds)
    claimable = or_(
        table.state == JobState.queued,
        (table.state == JobState.running) & ((table.lease == resume_lease) | (table.heartbeat_at < stale_before)),
    )
    with sessions() as session, session.begin():
        result = session.execute(
            update(table)
            .where(table.id == row_id, table.attempts < settings.max_attempts, claimable)
            .values(
                state=JobState.running,
                lease=token,
                worker=worker,
                attempts=table.attempts + 1,
                heartbeat_at=now,
                error=None,
                message="starting",
            )
        )
        if result.rowcount != 1:
            state = session.scalar(select(table.state).where(table.id == row_id))
            log.info("%s %s not claimed (state: %s); nothing to do", noun_of(table), row_id, state or "no such row")
            return None
        session.execute(update(table).where(table.id == row_id, table.started_at.is_(None)).values(started_at=now))
    return Lease(sessions, settings, row_id, token, table)


def noun_of(table: LeasedTable) -> str:
    """How logs and messages call a row of `table`."""
    return "job" if table is Job else "prediction run"


class Lease:
    """One attempt's hold on a job (or a row of `table`): the only way the attempt writes to that row."""

    def __init__(
        self, sessions: sessionmaker[Session], settings: Settings, row_id: str, token: str, table: LeasedTable = Job
    ):
        self.sessions = sessions
        self.settings = settings
        self.row_id = row_id
        self.token = token
        self.table = table
        self.noun = noun_of(table)
        self.lost = threading.Event()
        self._cancel_checked = 0.0
        self._cancelling = False

    def write(self, **values) -> None:
        """Update the row while it is live and the lease still ours; LeaseLost otherwise."""
        table = self.table
        with self.sessions() as session, session.begin():
            result = session.execute(
                update(table)
                .where(
                    table.id == self.row_id,
                    table.lease == self.token,
                    table.state.in_([JobState.running, JobState.cancelling]),
                )
                .values(**values)
            )
        if result.rowcount != 1:
            self.lost.set()
            raise LeaseLost(self.row_id)

    def beat(self) -> None:
        self.write(heartbeat_at=utcnow())

    def end(self, session: Session, state: JobState, **values) -> bool:
        """Give the row its final state and release the lease, in the caller's transaction; False when
        the lease was lost (the row is another attempt's now, and nothing is written)."""
        result = session.execute(
            update(self.table)
            .where(self.table.id == self.row_id, self.table.lease == self.token)
            .values(state=state, lease=None, finished_at=utcnow(), **values)
        )
        return result.rowcount == 1

    def should_cancel(self) -> bool:
        """Whether the job was asked to cancel; raises LeaseLost once the job is no longer ours."""
        if self.lost.is_set():
            raise LeaseLost(self.row_id)
        now = time.monotonic()
        if not self._cancelling and now - self._cancel_checked >= CANCEL_CHECK_SECONDS:
            self._cancel_checked = now
            table = self.table
            with self.sessions() as session:
                state, lease = session.execute(select(table.state, table.lease).where(table.id == self.row_id)).one()
            if lease != self.token:
                self.lost.set()
                raise LeaseLost(self.row_id)
            self._cancelling = state == JobState.cancelling
        return self._cancelling


class Heartbeat(threading.Thread):
    """Keeps the row's heartbeat fresh while a stage computes for long between progress reports."""

    def __init__(self, lease: Lease, interval: float):
        super().__init__(name=f"heartbeat-{lease.row_id}", daemon=True)
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
                log.warning("%s %s: heartbeat not written (%s); retrying", self.lease.noun, self.lease.row_id, err)
