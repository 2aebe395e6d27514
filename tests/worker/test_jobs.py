"""Claims and leases: one attempt owns a job at a time, and a replaced attempt can no longer write."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.models import Job, JobState
from tests.worker.conftest import job_row
from worker.jobs import LeaseLost, claim
from worker.reaper import reap


def test_a_queued_job_is_claimed_once(settings, sessions, make_job):
    job_id = make_job()
    run = claim(sessions, settings, job_id, worker="w1")
    assert run is not None
    row = job_row(sessions, job_id)
    assert (row.state, row.attempts, row.lease, row.worker) == (JobState.running, 1, run.lease, "w1")
    assert row.started_at is not None and row.heartbeat_at is not None
    assert claim(sessions, settings, job_id, worker="w2") is None  # a duplicate message finds it taken


def test_finished_or_missing_jobs_are_not_claimed(settings, sessions, make_job):
    for state in (JobState.succeeded, JobState.failed, JobState.cancelled, JobState.cancelling):
        assert claim(sessions, settings, make_job(state=state), worker="w") is None
    assert claim(sessions, settings, "no-such-job", worker="w") is None


def test_a_stale_running_job_can_be_taken_over_but_not_past_max_attempts(settings, sessions, make_job):
    stale = settings.stale_after_seconds + 1
    job_id = make_job(state=JobState.running, stale_by=stale, attempts=1, lease="old")
    run = claim(sessions, settings, job_id, worker="w2")
    assert run is not None and job_row(sessions, job_id).attempts == 2
    exhausted = make_job(state=JobState.running, stale_by=stale, attempts=settings.max_attempts, lease="old")
    assert claim(sessions, settings, exhausted, worker="w2") is None


def test_a_retry_resumes_its_own_lease(settings, sessions, make_job):
    job_id = make_job()
    first = claim(sessions, settings, job_id, worker="w")
    assert claim(sessions, settings, job_id, worker="w", resume_lease="someone-else") is None
    second = claim(sessions, settings, job_id, worker="w", resume_lease=first.lease)
    assert second is not None and second.lease != first.lease
    with pytest.raises(LeaseLost):
        first.beat()


def test_cancel_is_seen_at_the_next_check(settings, sessions, make_job):
    job_id = make_job()
    run = claim(sessions, settings, job_id, worker="w")
    assert run.should_cancel() is False
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.cancelling))
    run._cancel_checked = 0.0  # the next batch boundary, however soon it comes
    assert run.should_cancel() is True
    run.beat()  # a cancelling job still belongs to its attempt until it stops


def test_a_requeued_attempt_loses_its_lease(settings, sessions, make_job, celery):
    job_id = make_job()
    run = claim(sessions, settings, job_id, worker="w1")
    assert reap(sessions, settings, celery, worker="w1") == {job_id: "requeued"}
    with pytest.raises(LeaseLost):
        run.beat()
    with pytest.raises(LeaseLost):
        run.should_cancel()
    with pytest.raises(LeaseLost):
        run.on_stage("train_cam", "start")
    successor = claim(sessions, settings, job_id, worker="w2")
    assert successor is not None and job_row(sessions, job_id).lease == successor.lease
