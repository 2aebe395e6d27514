"""Fair queues between API keys: at most a few of a key's jobs in the broker or running, the others
held in the database and sent oldest first as its jobs end (app.dispatch).

On SQLite and PostgreSQL: the cap and the order, and many deciders at once never sending a job twice
nor past the cap. Over HTTP: the place in the queue a held job reports, and a cancel that frees a
slot. With a real worker: key A queues 10 jobs, key B one, and B's starts before A's third.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from app.db import create_db_engine, make_sessionmaker, session_scope, upgrade
from app.dispatch import queue_positions, send_next_jobs, send_next_jobs_after_end
from app.job_service import NO_LIVE_WORKER
from app.models import ApiKey, Dataset, Job, JobState, utcnow
from app.queue import create_celery
from tests.app.conftest import new_key
from tests.app.service import (
    REDIS_URL,
    ApiServer,
    WorkerProcess,
    create_postgres_database,
    drop_postgres_database,
    drop_redis_keys,
    make_dataset_zip,
    make_settings,
    require_redis,
    small_dataset,
    take_queued_tasks,
    upload,
)

ENDED = ("succeeded", "failed", "cancelled")


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_db(request, tmp_path):
    """(settings, sessions, celery) on each database, with the embedded broker."""
    url = "" if request.param == "sqlite" else create_postgres_database()
    settings = make_settings(tmp_path / "data", database_url=url)
    settings.make_dirs()
    upgrade(settings.database_url)
    engine = create_db_engine(settings.database_url)
    yield settings, make_sessionmaker(engine), create_celery(settings)
    engine.dispose()
    if url:
        drop_postgres_database(url)


def add_key_with_jobs(sessions, name: str, count: int) -> tuple[int, list[str]]:
    """A key with `count` held jobs, created a millisecond apart, oldest first."""
    with session_scope(sessions) as session:
        owner = ApiKey(name=name, prefix=name[:16], key_hash=name.ljust(64, "0"))
        session.add(owner)
        session.flush()
        dataset = Dataset(
            owner_id=owner.id, name="d.zip", path=f"datasets/{name}", layout="manifest", classes=["a"],
            image_count=1, tag_counts={"a": 1}, gt_count=0, size_bytes=1,
        )  # fmt: skip
        session.add(dataset)
        session.flush()
        start = utcnow()
        jobs = [
            Job(
                owner_id=owner.id,
                dataset_id=dataset.id,
                state=JobState.queued,
                preset="cpu-small",
                config={},
                seed=0,
                models={},
                created_at=start + timedelta(milliseconds=i),
            )  # fmt: skip
            for i in range(count)
        ]
        session.add_all(jobs)
        session.flush()
        return owner.id, [job.id for job in jobs]


def sent_job_ids(settings) -> list[str]:
    """The ids in the queue, sorted: the embedded broker orders messages sent within one millisecond by
    a random name, so the order of sending is checked on send_next_jobs' answers instead."""
    return sorted(kwargs["job_id"] for _task, kwargs in take_queued_tasks(settings))


def end(sessions, job_ids: list[str], state: JobState = JobState.succeeded) -> None:
    with session_scope(sessions) as session:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(state=state, finished_at=utcnow()))


def test_a_key_gets_its_share_sent_oldest_first_and_the_next_as_each_ends(queue_db):
    settings, sessions, celery = queue_db
    alice, jobs = add_key_with_jobs(sessions, "alice", 5)
    bob, [bobs] = add_key_with_jobs(sessions, "bob", 1)

    with sessions() as session:
        assert send_next_jobs(session, settings, celery, alice) == jobs[:2]
        assert send_next_jobs(session, settings, celery, alice) == []  # both slots taken
        assert send_next_jobs(session, settings, celery, bob) == [bobs]  # another key's slots are its own
        held = list(session.scalars(select(Job).where(Job.id.in_(jobs + [bobs]))))
        assert queue_positions(session, held) == {jobs[2]: 2, jobs[3]: 3, jobs[4]: 4}
    assert sent_job_ids(settings) == sorted([*jobs[:2], bobs])

    end(sessions, [jobs[0]])
    end(sessions, [jobs[1]], JobState.cancelling)  # still running until its worker stops it: still a slot
    with sessions() as session:
        assert send_next_jobs(session, settings, celery, alice) == [jobs[2]]
        held = list(session.scalars(select(Job).where(Job.id.in_(jobs))))
        assert queue_positions(session, held) == {jobs[3]: 2, jobs[4]: 3}
    end(sessions, [jobs[1], jobs[2]], JobState.failed)
    with sessions() as session:
        assert send_next_jobs(session, settings, celery, alice) == jobs[3:]
    assert sent_job_ids(settings) == sorted([jobs[2], *jobs[3:]])


def at_once(count: int, action) -> list:
    """Run `action` in `count` threads released together; their results, or the first error raised."""
    barrier = threading.Barrier(count)
    results: list = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(action())
        except BaseException as err:  # re-raised in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_a_jobs_end_sends_its_keys_next_job(queue_db):
    settings, sessions, celery = queue_db
    alice, jobs = add_key_with_jobs(sessions, "alice", 3)
    with sessions() as session:
        send_next_jobs(session, settings, celery, alice)
    sent_job_ids(settings)
    send_next_jobs_after_end(sessions, settings, celery, jobs[0])
    assert sent_job_ids(settings) == []  # it has not ended: both slots are still taken
    end(sessions, [jobs[0]], JobState.failed)
    send_next_jobs_after_end(sessions, settings, celery, jobs[0])
    assert sent_job_ids(settings) == [jobs[2]]


def test_many_deciders_at_once_never_send_a_job_twice_nor_past_the_cap(queue_db):
    settings, sessions, celery = queue_db
    alice, jobs = add_key_with_jobs(sessions, "alice", 12)
    cap = settings.max_running_jobs_per_key

    def decide() -> list[str]:
        with sessions() as session:
            return send_next_jobs(session, settings, celery, alice)

    for first in range(0, len(jobs), cap):
        sent = [job_id for job_ids in at_once(6, decide) for job_id in job_ids]
        assert sorted(sent) == sorted(jobs[first : first + cap]), first
        assert sorted(sent_job_ids(settings)) == sorted(sent), first
        end(sessions, sent)


def test_held_jobs_report_their_place_and_a_cancel_frees_a_slot(tmp_path, settings):
    zip_path = make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        dataset_id = upload(alice, zip_path).json()["id"]
        body = {"dataset_id": dataset_id, "preset": "cpu-small"}
        created = [alice.post("/v1/jobs", json=body).json() for _ in range(4)]
        assert [job["queued_behind"] for job in created] == [None, None, 2, 3]
        assert created[3]["state"] == "queued" and created[3]["message"] == "queued behind 3 of your jobs"
        listed = alice.get("/v1/jobs").json()["items"][::-1]  # newest first
        assert [job["queued_behind"] for job in listed] == [None, None, 2, 3]
        assert sent_job_ids(settings) == sorted([created[0]["id"], created[1]["id"]])

        assert alice.post(f"/v1/jobs/{created[3]['id']}/cancel").json()["state"] == "cancelled"
        assert sent_job_ids(settings) == []  # a held job's cancel frees no slot
        cancelled = alice.post(f"/v1/jobs/{created[0]['id']}/cancel").json()
        assert cancelled["state"] == "cancelled" and cancelled["queued_behind"] is None
        assert sent_job_ids(settings) == [created[2]["id"]]
        third = alice.get(f"/v1/jobs/{created[2]['id']}").json()
        assert third["state"] == "queued" and third["queued_behind"] is None
        assert third["message"] == NO_LIVE_WORKER  # waiting for a worker now, not for the key's jobs


@pytest.fixture(params=["embedded", "redis-postgresql"])
def service_settings(request, tmp_path):
    """Settings for the API and a worker: embedded (SQLite, file queue), then scale-out (PostgreSQL, Redis).
    Weight files allowed, to queue jobs that end at once for want of one."""
    # The reaper sweeps once, at the worker's start: what is sent later, the ends of jobs send.
    options = {"allow_weight_files": True, "reaper_interval_seconds": 600}
    if request.param == "embedded":
        yield make_settings(tmp_path / "data", **options)
        return
    require_redis()
    url = create_postgres_database()
    settings = make_settings(tmp_path / "shared", database_url=url, broker_url=REDIS_URL, **options)
    yield settings
    drop_redis_keys(f"{settings.queue}:")
    drop_postgres_database(url)


def test_a_second_keys_job_starts_before_the_first_keys_third(tmp_path, service_settings):
    settings = service_settings
    zip_path = make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")
    with ApiServer(settings) as api, api.client(new_key(settings, "a")) as a, api.client(new_key(settings, "b")) as b:
        # Jobs that end before their first stage (no such weight file): the order of starts is the point.
        config = {"models": {"cam_weights": str(tmp_path / "missing.pth")}}
        body = {"dataset_id": upload(a, zip_path).json()["id"], "preset": "cpu-small", "config": config}
        a_jobs = [a.post("/v1/jobs", json=body).json() for _ in range(10)]
        b_job = b.post("/v1/jobs", json={**body, "dataset_id": upload(b, zip_path).json()["id"]}).json()
        assert [job["queued_behind"] for job in a_jobs] == [None, None, *range(2, 10)]
        assert all(job["message"] == f"queued behind {i} of your jobs" for i, job in enumerate(a_jobs) if i > 1)
        assert b_job["queued_behind"] is None

        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            deadline = time.monotonic() + 120
            while True:
                jobs = a.get("/v1/jobs", params={"limit": 20}).json()["items"] + [b.get("/v1/jobs").json()["items"][0]]
                if all(job["state"] in ENDED for job in jobs):
                    break
                assert time.monotonic() < deadline, ([job["state"] for job in jobs], worker.log())
                time.sleep(0.3)
        finally:
            worker.stop()

    by_id = {job["id"]: job for job in jobs}
    assert all(job["state"] == "failed" and "missing.pth not found" in job["error"] for job in jobs), jobs
    started = sorted(by_id, key=lambda job_id: by_id[job_id]["started_at"])
    a_ids = [job["id"] for job in a_jobs]
    # A's two sent at once, then B's (sent before A's third, which waited for A's first to end), then A's rest.
    assert started == [*a_ids[:2], b_job["id"], *a_ids[2:]]
