"""Claims and leases: one attempt owns a job at a time, and a replaced attempt can no longer write."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import update

from app.db import session_scope
from app.models import Job, JobState
from ml.spec.layout import RunLayout
from tests.worker.conftest import job_row
from worker.lease import Heartbeat, LeaseLost, attempt_token, claim
from worker.reaper import reap
from worker.recording import StageRecorder


def test_a_queued_job_is_claimed_once(settings, sessions, make_job):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w1")
    assert lease is not None
    row = job_row(sessions, job_id)
    assert (row.state, row.attempts, row.lease, row.worker) == (JobState.running, 1, lease.token, "w1")
    assert row.started_at is not None and row.heartbeat_at is not None
    assert claim(sessions, settings, job_id, worker="w2") is None  # a duplicate message finds it taken


def test_finished_or_missing_jobs_are_not_claimed(settings, sessions, make_job):
    for state in (JobState.succeeded, JobState.failed, JobState.cancelled, JobState.cancelling):
        assert claim(sessions, settings, make_job(state=state), worker="w") is None
    assert claim(sessions, settings, "no-such-job", worker="w") is None


def test_a_stale_running_job_can_be_taken_over_but_not_past_max_attempts(settings, sessions, make_job):
    stale = settings.stale_after_seconds + 1
    job_id = make_job(state=JobState.running, stale_by=stale, attempts=1, lease="old")
    lease = claim(sessions, settings, job_id, worker="w2")
    assert lease is not None and job_row(sessions, job_id).attempts == 2
    exhausted = make_job(state=JobState.running, stale_by=stale, attempts=settings.max_attempts, lease="old")
    assert claim(sessions, settings, exhausted, worker="w2") is None


def test_a_retry_resumes_its_own_lease(settings, sessions, make_job):
    job_id = make_job()
    first = claim(sessions, settings, job_id, worker="w")
    assert claim(sessions, settings, job_id, worker="w", resume_lease="someone-else") is None
    second = claim(sessions, settings, job_id, worker="w", resume_lease=first.token)
    assert second is not None and second.token != first.token
    with pytest.raises(LeaseLost):
        first.beat()


def test_an_attempt_token_names_one_delivery_in_one_pool_process(settings, sessions, make_job):
    token = attempt_token("w@host", 41, "task-1", 0)
    assert token == attempt_token("w@host", 41, "task-1", 0) and len(token) == 32
    others = {
        attempt_token("w@other", 41, "task-1", 0),
        attempt_token("w@host", 42, "task-1", 0),  # the same message redelivered to another process
        attempt_token("w@host", 41, "task-2", 0),
        attempt_token("w@host", 41, "task-1", 1),  # the task retried after a transient error
    }
    assert token not in others and len(others) == 4
    job_id = make_job()
    assert claim(sessions, settings, job_id, worker="w@host", token=token).token == token
    assert job_row(sessions, job_id).lease == token


def test_cancel_is_seen_at_the_next_check(settings, sessions, make_job):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w")
    assert lease.should_cancel() is False
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.cancelling))
    lease._cancel_checked = 0.0  # the next batch boundary, however soon it comes
    assert lease.should_cancel() is True
    lease.beat()  # a cancelling job still belongs to its attempt until it stops


def test_a_requeued_attempt_loses_its_lease(settings, sessions, make_job, celery, tmp_path):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w1")
    assert reap(sessions, settings, celery, worker="w1") == {job_id: "requeued"}
    with pytest.raises(LeaseLost):
        lease.beat()
    with pytest.raises(LeaseLost):
        lease.should_cancel()
    with pytest.raises(LeaseLost):
        StageRecorder(lease, RunLayout(tmp_path)).on_stage("train_cam", "start")
    successor = claim(sessions, settings, job_id, worker="w2")
    assert successor is not None and job_row(sessions, job_id).lease == successor.token


def test_the_heartbeat_beats_until_the_lease_is_lost(settings, sessions, make_job):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w")
    claimed_at = job_row(sessions, job_id).heartbeat_at
    with Heartbeat(lease, interval=0.05) as heartbeat:
        deadline = time.monotonic() + 5
        while job_row(sessions, job_id).heartbeat_at == claimed_at and time.monotonic() < deadline:
            time.sleep(0.02)
        assert job_row(sessions, job_id).heartbeat_at > claimed_at
        claim(sessions, settings, job_id, worker="w2", resume_lease=lease.token)
        heartbeat.join(timeout=5)
        assert not heartbeat.is_alive() and lease.lost.is_set()  # stopped by itself, for the pipeline to notice
