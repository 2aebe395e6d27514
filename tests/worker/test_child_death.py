"""A job whose pool process dies is requeued at once by the worker's main process.

The rules on a database (requeued and sent again, failed past max_attempts, cancelled when it was
cancelling, never another attempt's job), then a real `pole worker` whose pool process running a job
is killed with SIGKILL: the job is running again well before its heartbeat could look stale, and succeeds.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from app.models import JobState
from tests.app.conftest import new_key
from tests.app.service import (
    FAST_CONFIG,
    ApiServer,
    WorkerProcess,
    make_dataset_zip,
    make_settings,
    small_dataset,
    upload,
    wait_for,
)
from tests.worker.conftest import job_row, queued_messages
from worker.child_death import release_after_death
from worker.lease import claim

DEATH = "Worker exited prematurely: signal 9 (SIGKILL) Job: 0."


def test_the_dead_attempts_job_is_requeued_and_sent_again(settings, sessions, make_job, celery):
    job_id = make_job()
    lease = claim(sessions, settings, job_id, worker="w1", token="a" * 32)
    assert release_after_death(sessions, settings, celery, job_id, lease.token, DEATH) == "requeued"
    row = job_row(sessions, job_id)
    assert (row.state, row.lease, row.worker, row.attempts) == (JobState.queued, None, None, 1)
    assert row.message == "requeued after the worker process running it died (attempt 1 of 3)"
    assert row.enqueued_at is not None  # the reaper's clock for sending it again, were the message lost
    [message] = queued_messages(settings)
    assert job_id in message and "pole.run_job" in message
    assert release_after_death(sessions, settings, celery, job_id, lease.token, DEATH) is None  # never twice
    assert claim(sessions, settings, job_id, worker="w1") is not None


def test_past_max_attempts_the_job_fails_with_the_reason(settings, sessions, make_job, celery):
    job_id = make_job(state=JobState.running, attempts=settings.max_attempts, lease="b" * 32)
    assert release_after_death(sessions, settings, celery, job_id, "b" * 32, DEATH) == "failed"
    row = job_row(sessions, job_id)
    assert (row.state, row.lease) == (JobState.failed, None) and row.finished_at is not None
    assert row.error.startswith(f"the worker process running it died {settings.max_attempts} times (last: {DEATH})")
    assert queued_messages(settings) == []


def test_a_cancelling_job_is_cancelled(settings, sessions, make_job, celery):
    job_id = make_job(state=JobState.cancelling, attempts=1, lease="c" * 32)
    assert release_after_death(sessions, settings, celery, job_id, "c" * 32, DEATH) == "cancelled"
    assert job_row(sessions, job_id).state == JobState.cancelled
    assert queued_messages(settings) == []


def test_a_job_the_dead_attempt_did_not_hold_is_left_alone(settings, sessions, make_job, celery):
    live = make_job(state=JobState.running, attempts=1, lease="d" * 32)  # another attempt took it over
    queued = make_job()  # the process died before claiming it
    done = make_job(state=JobState.succeeded, attempts=1)  # ... or after ending it
    for job_id in (live, queued, done):
        assert release_after_death(sessions, settings, celery, job_id, "e" * 32, DEATH) is None
    assert [job_row(sessions, j).state for j in (live, queued, done)] == ["running", "queued", "succeeded"]
    assert job_row(sessions, live).lease == "d" * 32
    assert queued_messages(settings) == []


def pool_processes(worker: WorkerProcess) -> list[int]:
    pid = worker.process.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the pool process through /proc")
def test_a_killed_pool_process_hands_its_job_to_a_new_attempt_at_once(tmp_path):
    # Stale only after a minute: the reaper cannot be what brings the job back within the few seconds allowed.
    settings = make_settings(tmp_path / "data", stale_after_seconds=60)
    zip_path = make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            dataset_id = upload(alice, zip_path).json()["id"]
            config = {**FAST_CONFIG, "train_cam": {"epochs": 3, "batch_size": 2}}
            body = {"dataset_id": dataset_id, "preset": "cpu-small", "config": config}
            job_id = alice.post("/v1/jobs", json=body).json()["id"]
            wait_for(alice, job_id, lambda j: j["stage"] == "train_cam" and j["stage_progress"] > 0, 180, "train_cam")
            [pool_process] = pool_processes(worker)
            os.kill(pool_process, signal.SIGKILL)
            killed = time.monotonic()

            requeued = wait_for(alice, job_id, lambda j: j["attempts"] == 2 or j["state"] == "queued", 30, "a requeue")
            assert time.monotonic() - killed < 8, "requeued by the worker, not by the reaper a minute later"
            assert requeued["state"] in ("queued", "running")
            assert worker.process.poll() is None  # the worker itself lives on, with a new pool process
            done = wait_for(alice, job_id, lambda j: j["state"] in ("succeeded", "failed"), 400, "the new attempt")
            assert done["state"] == "succeeded", (done, worker.log())
        finally:
            worker.stop()
    assert done["attempts"] == 2
    assert "the worker process running it died (Worker exited prematurely: signal 9 (SIGKILL)" in worker.log(chars=None)
