"""Fair queues: which of an API key's queued jobs are handed to the broker now.

A key has at most `max_running_jobs_per_key` jobs sent and unfinished (queued with a message in the
broker, running, cancelling). Its other queued jobs are held in the database with no message
(`enqueued_at` NULL) and sent oldest first as its jobs end, so the broker's queue holds only a few of
one key's jobs and another key's job waits behind those few, however many the first key queued.

Whatever frees a slot sends the key's next jobs: the API after cancelling a queued job, the worker
after a job ends. The reaper's sweep sends them for the jobs it fails or cancels, and whatever a crash
between a job's end and that send left held. A held job is not in the broker, so no broker restart
can lose it.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import defaultdict

from celery import Celery
from kombu.exceptions import OperationalError as BrokerUnreachable
from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError as DatabaseUnreachable
from sqlalchemy.orm import Session, sessionmaker

from app.models import ApiKey, Job, JobState, utcnow
from app.queue import send_run_job
from app.settings import Settings

log = logging.getLogger("pole.queue")

# Holding one of its key's slots: its message went to the broker and it has not ended.
SENT = Job.state.in_([JobState.running, JobState.cancelling]) | (
    (Job.state == JobState.queued) & Job.enqueued_at.is_not(None)
)
# Waiting in the database for a slot of its key.
HELD = (Job.state == JobState.queued) & Job.enqueued_at.is_(None)


def is_held(job: Job) -> bool:
    return job.state == JobState.queued and job.enqueued_at is None


def take_next_jobs(session: Session, settings: Settings, owner_id: int) -> list[str]:
    """Mark the key's oldest held jobs as sent, one per free slot, in the caller's transaction (which
    this must open); returns their ids, to send once it commits."""
    # The write lock first. PostgreSQL keeps this row locked until the commit, so two decisions for one
    # key never overlap; SQLite takes its database write lock here, before the reads, for the same end.
    session.execute(update(ApiKey).where(ApiKey.id == owner_id).values(name=ApiKey.name))
    sent = session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == owner_id, SENT))
    free = settings.max_running_jobs_per_key - sent
    if free <= 0:
        return []
    oldest = select(Job.id).where(Job.owner_id == owner_id, HELD).order_by(Job.created_at, Job.id).limit(free)
    job_ids = list(session.scalars(oldest))
    if not job_ids:
        return []
    # Still held: a job cancelled since the read (cancels take no lock) is not sent.
    taken = set(
        session.scalars(update(Job).where(Job.id.in_(job_ids), HELD).values(enqueued_at=utcnow()).returning(Job.id))
    )
    return [job_id for job_id in job_ids if job_id in taken]


def send_next_jobs(session: Session, settings: Settings, celery: Celery, owner_id: int) -> list[str]:
    """Send the key's next jobs while it has free slots; returns their ids. Call it with no transaction
    open. Raises kombu's OperationalError when the broker cannot be reached: the jobs taken stay marked
    as sent, and the reaper sends them again (worker.reaper)."""
    with session.begin():
        job_ids = take_next_jobs(session, settings, owner_id)
    for job_id in job_ids:
        send_run_job(celery, job_id)
    if job_ids:
        log.info("key %s: sent job(s) %s", owner_id, ", ".join(job_ids))
    return job_ids


def send_next_jobs_after_end(sessions: sessionmaker[Session], settings: Settings, celery: Celery, job_id: str) -> None:
    """Send the next jobs of `job_id`'s key, `job_id` having ended. An unreachable broker or database is
    only logged: the reaper's sweep sends them later."""
    try:
        with sessions() as session:
            owner_id = session.scalar(select(Job.owner_id).where(Job.id == job_id))
        if owner_id is not None:
            with sessions() as session:
                send_next_jobs(session, settings, celery, owner_id)
    except (BrokerUnreachable, DatabaseUnreachable) as err:
        log.error("job %s ended, but its key's next job was not sent (%s); the reaper will send it", job_id, err)


def owners_with_free_slots(session: Session, settings: Settings) -> list[int]:
    """The keys that hold jobs back while they have fewer than their share sent."""
    held = set(session.scalars(select(Job.owner_id).where(HELD).distinct()))
    if not held:
        return []
    sent = dict(
        session.execute(
            select(Job.owner_id, func.count()).where(Job.owner_id.in_(held), SENT).group_by(Job.owner_id)
        ).all()
    )
    return sorted(owner for owner in held if sent.get(owner, 0) < settings.max_running_jobs_per_key)


def queue_positions(session: Session, jobs: list[Job]) -> dict[str, int]:
    """For each held job of `jobs`: how many of its key's jobs start before it (those sent and
    unfinished, and those held since before it)."""
    held = [job for job in jobs if is_held(job)]
    if not held:
        return {}
    sent: dict[int, int] = defaultdict(int)
    waiting: dict[int, list[tuple]] = defaultdict(list)  # (created_at, id) of each held job, per key
    rows = session.execute(
        select(Job.owner_id, Job.state, Job.enqueued_at, Job.created_at, Job.id).where(
            Job.owner_id.in_({job.owner_id for job in held}), SENT | HELD
        )
    )
    for owner_id, state, enqueued_at, created_at, job_id in rows:
        if state == JobState.queued and enqueued_at is None:
            waiting[owner_id].append((created_at, job_id))
        else:
            sent[owner_id] += 1
    for keys in waiting.values():
        keys.sort()
    return {job.id: sent[job.owner_id] + bisect_left(waiting[job.owner_id], (job.created_at, job.id)) for job in held}
