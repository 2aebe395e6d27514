"""The reaper: stale jobs and prediction runs requeued (with a real message on the embedded queue), failed
past the cap; queued ones whose message vanished sent again, without piling up duplicates."""

from __future__ import annotations

from datetime import timedelta

from app.db import session_scope
from app.models import Job, JobState, PredictionRun, utcnow
from app.queue import send_run_job
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


def test_a_queued_job_or_prediction_run_whose_message_vanished_is_sent_again(settings, sessions, make_job, celery):
    long_ago = utcnow() - timedelta(seconds=settings.requeue_after_seconds + 1)
    lost = make_job(enqueued_at=long_ago)  # sent, and no message is in the queue
    just_sent = make_job(enqueued_at=utcnow())  # its message may still be on its way
    held = make_job()  # never sent: waits for a slot of its key, whose two are taken (app.dispatch)
    with session_scope(sessions) as session:
        owner_id = session.get(Job, lost).owner_id
        run = PredictionRun(
            owner_id=owner_id, job_id=lost, name="new.zip", images={"a": "a.png"}, image_count=1,
            state=JobState.queued, created_at=long_ago,
        )  # fmt: skip
        session.add(run)
        session.flush()
        prediction_id = run.id

    assert reap(sessions, settings, celery) == {lost: "resent", prediction_id: "resent"}
    messages = queued_messages(settings)
    assert len(messages) == 2
    assert sum(lost in m for m in messages) == sum(prediction_id in m for m in messages) == 1
    assert job_row(sessions, lost).enqueued_at > long_ago
    assert job_row(sessions, just_sent).enqueued_at < job_row(sessions, lost).enqueued_at
    assert job_row(sessions, held).enqueued_at is None
    # Due again only a requeue period later, and only if the queue has lost a message meanwhile.
    assert reap(sessions, settings, celery) == {}


def test_no_duplicates_while_the_queue_holds_a_message_per_waiting_job(settings, sessions, make_job, celery):
    long_ago = utcnow() - timedelta(seconds=settings.requeue_after_seconds + 1)
    waiting = [make_job(enqueued_at=long_ago) for _ in range(2)]
    for job_id in waiting:
        send_run_job(celery, job_id)  # every worker busy: the messages wait their turn
    assert reap(sessions, settings, celery) == {}
    assert len(queued_messages(settings)) == 2
    # A worker takes one and is killed before it claims the job: the file queue forgets the message.
    sorted((settings.broker_dir / "queue").iterdir())[0].unlink()
    assert reap(sessions, settings, celery) == {job_id: "resent" for job_id in waiting}
    assert len(queued_messages(settings)) == 3  # a duplicate for the job whose message was there


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
