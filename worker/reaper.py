"""Finds jobs whose worker stopped sending heartbeats and requeues them, up to `max_attempts`; sends
again the queued ones whose message the broker lost; sends the jobs a key may run now (app.dispatch).

A requeued job resumes from its last finished stage (the stages skip what is on disk). Each
worker runs the reaper in a thread of its main process; every change is a compare-and-set on the
job's lease, so several reapers, or a reaper racing a live worker, can never both act on a job.
A worker also recovers, soon after it starts, the jobs its own name was running whose heartbeat
has not moved since it started: its previous life left them, and there is no need to wait for
their heartbeats to go stale. (Two live workers sharing a name keep each other's jobs beating, so
even that mistake costs nothing.) Prediction runs, leased as jobs are (worker.lease), are recovered
and sent again the same way; they are not held back per key.

A message can vanish before any worker takes it (a broker restarted without persistence, an embedded
queue whose worker was killed holding it). A queued row sent `requeue_after_seconds` ago is then sent
again, but only while the broker's queue holds fewer messages than there are rows waiting for one:
while every message may still be there, a busy queue gets no duplicates. A duplicate is harmless
anyway: the worker that takes it finds the row claimed (worker.lease) and does nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from celery import Celery, bootsteps
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.db import create_db_engine, make_sessionmaker
from app.dispatch import owners_with_free_slots, send_next_jobs
from app.models import Job, JobState, PredictionRun, utcnow
from app.queue import send_run_job, send_run_prediction, waiting_messages
from app.settings import Settings
from worker.lease import TRANSIENT_ERRORS, LeasedTable, noun_of

# What the reaper looks after: each leased table with how to send one of its rows to the workers again.
LEASED: tuple[tuple[LeasedTable, Callable[[Celery, str], None]], ...] = (
    (Job, send_run_job),
    (PredictionRun, send_run_prediction),
)

log = logging.getLogger("pole.reaper")


def reap(
    sessions: sessionmaker[Session],
    settings: Settings,
    celery: Celery,
    worker: str | None = None,
    started_at: datetime | None = None,
) -> dict:
    """Act on every job and prediction run whose worker is gone or whose message is lost, and send the
    jobs that keys may run now; returns {id: action}.

    Gone: its heartbeat is older than `stale_after_seconds`; or, when `worker` is given (by that
    worker, just started at `started_at`), it is marked as running on `worker` by an earlier life
    of it (last heartbeat before `started_at`). Running ones are requeued, or failed past
    `max_attempts`; cancelling jobs become cancelled. Lost: see the module's docstring.
    """
    actions = {}
    for table, send in LEASED:
        actions.update(_reap_table(table, send, sessions, settings, celery, worker, started_at))
    actions.update(_resend_lost(sessions, settings, celery))
    actions.update(_send_held(sessions, settings, celery))
    return actions


def _reap_table(
    table: LeasedTable,
    send: Callable[[Celery, str], None],
    sessions: sessionmaker[Session],
    settings: Settings,
    celery: Celery,
    worker: str | None,
    started_at: datetime | None,
) -> dict:
    now = utcnow()
    live = table.state.in_([JobState.running, JobState.cancelling])
    if worker:
        gone = live & (table.worker == worker) & (table.heartbeat_at < (started_at or now))
    else:
        gone = live & (table.heartbeat_at < now - timedelta(seconds=settings.stale_after_seconds))
    columns = (table.id, table.state, table.lease, table.attempts, table.heartbeat_at)
    with sessions() as session:
        rows = session.execute(select(*columns).where(gone)).all()
    noun = noun_of(table)
    actions = {}
    for row_id, state, lease, attempts, heartbeat in rows:
        values, action = _release(table, state, attempts, heartbeat, settings.max_attempts)
        with sessions() as session, session.begin():
            # Compare-and-set: a worker that wrote meanwhile is alive after all, or another reaper got there first.
            changed = session.execute(
                update(table)
                .where(
                    table.id == row_id,
                    table.state == state,
                    table.lease.is_(None) if lease is None else table.lease == lease,
                )
                .where(table.heartbeat_at.is_(None) if heartbeat is None else table.heartbeat_at == heartbeat)
                .values(**values)
            ).rowcount
        if not changed:
            continue
        log.warning("%s %s: worker gone (last heartbeat %s); %s", noun, row_id, heartbeat, action)
        actions[row_id] = action
        if action == "requeued":
            _send(send, celery, row_id, noun)
    return actions


def _release(table: LeasedTable, state: str, attempts: int, heartbeat, max_attempts: int) -> tuple[dict, str]:
    now = utcnow()
    ended = {"lease": None, "finished_at": now}
    if state == JobState.cancelling:
        return {**ended, "state": JobState.cancelled, "message": "cancelled (its worker stopped)"}, "cancelled"
    noun = noun_of(table)
    if attempts >= max_attempts:
        reason = (
            f"gave up after {attempts} attempt(s): each time, the worker running the {noun} stopped sending "
            f"heartbeats (last at {heartbeat:%Y-%m-%d %H:%M:%S} UTC). It may have been killed for lack of "
            "memory; see the worker's log, or retry with smaller batches"
        )
        return {**ended, "state": JobState.failed, "error": reason}, "failed"
    message = f"requeued after its worker stopped (attempt {attempts} of {max_attempts})"
    values = {"lease": None, "worker": None, "state": JobState.queued, "message": message}
    return {**values, **_sent_at(table, now)}, "requeued"


def _last_sent(table: LeasedTable):
    """When the row's message was last handed to the broker. A job records it; a prediction run's clock is
    its heartbeat, written when it is requeued or sent again, else its creation (sent right after)."""
    if table is Job:
        return Job.enqueued_at
    return func.coalesce(PredictionRun.heartbeat_at, PredictionRun.created_at)


def _sent_at(table: LeasedTable, now: datetime) -> dict:
    return {"enqueued_at": now} if table is Job else {"heartbeat_at": now}


def _resend_lost(sessions: sessionmaker[Session], settings: Settings, celery: Celery) -> dict:
    """Send again the queued rows sent `requeue_after_seconds` ago that no worker took, while the
    broker's queue holds fewer messages than there are rows waiting for one."""
    due_before = utcnow() - timedelta(seconds=settings.requeue_after_seconds)
    with sessions() as session:
        due = {
            table: session.execute(
                select(table.id, _last_sent(table).label("sent")).where(
                    table.state == JobState.queued, _last_sent(table) < due_before
                )
            ).all()
            for table, _ in LEASED
        }
        if not any(due.values()):
            return {}
        expected = sum(
            session.scalar(
                select(func.count())
                .select_from(table)
                .where(table.state == JobState.queued, _last_sent(table).is_not(None))
            )
            for table, _ in LEASED
        )
    try:
        waiting = waiting_messages(celery)
    except BrokerUnreachable as err:
        log.error("reaper: queue unreachable (%s); lost messages are sent again later", err)
        return {}
    if waiting >= expected:
        return {}
    actions = {}
    for table, send in LEASED:
        for row_id, sent in due[table]:
            with sessions() as session, session.begin():
                # Compare-and-set: a worker may have claimed it meanwhile, or another reaper sent it again.
                changed = session.execute(
                    update(table)
                    .where(table.id == row_id, table.state == JobState.queued, _last_sent(table) == sent)
                    .values(**_sent_at(table, utcnow()))
                ).rowcount
            if changed:
                log.warning(
                    "%s %s: sent again; no worker took it since %s and the queue holds %d message(s) for %d waiting",
                    noun_of(table), row_id, sent, waiting, expected,
                )  # fmt: skip
                actions[row_id] = "resent"
                _send(send, celery, row_id, noun_of(table))
    return actions


def _send_held(sessions: sessionmaker[Session], settings: Settings, celery: Celery) -> dict:
    """Send the held jobs of keys with free slots: those whose ends this sweep made, and any that a
    crash between a job's end and its key's next send left waiting."""
    with sessions() as session:
        owners = owners_with_free_slots(session, settings)
    actions = {}
    for owner_id in owners:
        try:
            with sessions() as session:
                actions.update(dict.fromkeys(send_next_jobs(session, settings, celery, owner_id), "sent"))
        except BrokerUnreachable as err:
            log.error("key %s: queue unreachable (%s); its jobs are sent again later", owner_id, err)
    return actions


def _send(send: Callable[[Celery, str], None], celery: Celery, row_id: str, noun: str) -> None:
    try:
        send(celery, row_id)
    except BrokerUnreachable as err:
        # Queued in the database already: a later sweep sends it again once it is due.
        log.error("%s %s: queue unreachable (%s); will send it again later", noun, row_id, err)


class ReaperStep(bootsteps.StartStopStep):
    """Runs `reap` in the worker's main process: once for this worker's own jobs, then periodically."""

    # Long enough for any live holder of a job to have written a heartbeat since this worker started.
    HEARTBEATS_BEFORE_RECOVERY = 2

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker) -> None:
        started_at = utcnow()  # jobs this worker claims from now on are not its previous life's
        self._thread = threading.Thread(target=self._loop, args=(worker, started_at), name="pole-reaper", daemon=True)
        self._thread.start()

    def _loop(self, worker, started_at: datetime) -> None:
        settings: Settings = worker.app.conf.pole_settings
        # NullPool: no connection stays open in this process for a forked pool child to inherit.
        sessions = make_sessionmaker(create_db_engine(settings.database_url, poolclass=NullPool))
        own_jobs = worker.hostname  # first sweep: what this worker's previous life left running
        if self._stop.wait(self.HEARTBEATS_BEFORE_RECOVERY * settings.heartbeat_seconds):
            return
        while True:
            try:
                reap(sessions, settings, worker.app, worker=own_jobs, started_at=started_at)
                own_jobs = None
            except TRANSIENT_ERRORS as err:
                log.warning("reaper: database unreachable (%s); trying again", err)
            if self._stop.wait(settings.reaper_interval_seconds):
                return

    def stop(self, worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
