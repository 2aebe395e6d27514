"""The reaper: stale jobs and prediction runs requeued (with a real message on the embedded queue), failed
past the cap."""

from __future__ import annotations

from datetime import timedelta

from app.db import session_scope
from app.models import Job, JobState, PredictionRun, utcnow
from tests.worker.conftest import job_row, queued_messages
from worker.reaper import reap


def test_stale_jobs_are_requeued_failed_or_cancelled(settings, sessions, make_job, celery):
    stale = settings.stale_after_seconds + 2
    requeue = make_job(state=JobState.running, stale_by=stale, attempts=1, lease="a", worker="gone")
    give_up = make_job(state=JobState.running, stale_by=stale, attempts=settings.max_attempts, lease="b")
    cancel = make_job(state=JobState.cancelling, stale_by=stale, attempts=1, lease="c")
    alive = make_job(state=JobState.running, stale_by=0, attempts=1, lease="d")
    done = make_job(state=JobState.succeeded, stale_by=stale, attempts=1)

    actions = reap(sessions, settings, celery)

    assert actions == {requeue: "requeued", give_up: "failed", cancel: "cancelled"}
    row = job_row(sessions, requeue)
    assert (row.state, row.lease, row.worker, row.attempts) == (JobState.queued, None, None, 1)
    assert "requeued after its worker stopped (attempt 1 of 3)" in row.message
    messages = queued_messages(settings)
    assert len(messages) == 1 and requeue in messages[0] and "pole.run_job" in messages[0]
    failed = job_row(sessions, give_up)
    assert failed.state == JobState.failed and failed.finished_at is not None
    assert failed.error.startswith(f"gave up after {settings.max_attempts} attempt(s)")
    assert "stopped sending heartbeats" in failed.error
    assert job_row(sessions, cancel).state == JobState.cancelled
    assert job_row(sessions, alive).state == JobState.running
    assert job_row(sessions, done).state == JobState.succeeded
    assert reap(sessions, settings, celery) == {}  # nothing is acted on twice


def test_a_starting_worker_recovers_only_what_its_previous_life_ran(settings, sessions, make_job, celery):
    mine = make_job(state=JobState.running, stale_by=1, attempts=1, lease="a", worker="w1")
    theirs = make_job(state=JobState.running, stale_by=1, attempts=1, lease="b", worker="w2")
    started_at = utcnow()
    claimed_since = make_job(state=JobState.running, stale_by=0, attempts=1, lease="c", worker="w1")
    assert reap(sessions, settings, celery, worker="w1", started_at=started_at) == {mine: "requeued"}
    assert job_row(sessions, theirs).state == JobState.running
    assert job_row(sessions, claimed_since).state == JobState.running


def test_a_requeued_job_nobody_took_is_sent_again(settings, sessions, make_job, celery):
    job_id = make_job(state=JobState.queued, stale_by=settings.stale_after_seconds + 1)
    never_run = make_job(state=JobState.queued)  # no heartbeat yet: its first message is in the queue
    assert reap(sessions, settings, celery) == {job_id: "resent"}
    assert reap(sessions, settings, celery) == {}  # not again until another stale period has passed
    assert job_row(sessions, never_run).heartbeat_at is None
    assert len(queued_messages(settings)) == 1


def test_a_stale_prediction_run_is_requeued_as_a_job_is(settings, sessions, make_job, celery):
    job_id = make_job(state=JobState.succeeded)
    stale = utcnow() - timedelta(seconds=settings.stale_after_seconds + 2)
    with session_scope(sessions) as session:
        owner_id = session.get(Job, job_id).owner_id
        run = PredictionRun(
            owner_id=owner_id, job_id=job_id, name="new.zip", images={"a": "a.png"}, image_count=1,
            state=JobState.running, lease="a", worker="gone", attempts=1, heartbeat_at=stale,
        )  # fmt: skip
        session.add(run)
        session.flush()
        prediction_id = run.id
    assert reap(sessions, settings, celery) == {prediction_id: "requeued"}
    with sessions() as session:
        row = session.get(PredictionRun, prediction_id)
        assert (row.state, row.lease, row.attempts) == (JobState.queued, None, 1)
    messages = queued_messages(settings)
    assert len(messages) == 1 and prediction_id in messages[0] and "pole.run_prediction" in messages[0]
