"""Nothing lost between the queue and the workers, on PostgreSQL and Redis with real `pole worker` processes:
a job whose message the broker lost is sent again by the reaper and runs to the end, and a message
delivered twice, to two workers at once, runs the job once."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from app.db import create_db_engine
from app.models import JobStage
from app.queue import create_celery, send_run_job, waiting_messages
from tests.app.conftest import new_key
from tests.app.service import (
    FAST_CONFIG,
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
    upload,
    wait_for,
)

# The service's path, shortened: no prompt selection, every other stage once.
SHORT_CONFIG = {**FAST_CONFIG, "train_pole": {"enabled": False}}


@pytest.fixture
def scale_out_settings(tmp_path):
    require_redis()
    database_url = create_postgres_database()
    # Sent again 2 s after a send no worker took; a job is never taken for dead here (a job process that
    # imports torch on a loaded machine writes no heartbeat for a while).
    settings = make_settings(
        tmp_path / "shared",
        database_url=database_url,
        broker_url=REDIS_URL,
        requeue_after_seconds=2,
        stale_after_seconds=600,
    )
    yield settings
    drop_redis_keys(f"{settings.queue}:")
    drop_postgres_database(database_url)


@pytest.fixture
def dataset_zip(tmp_path):
    return make_dataset_zip(small_dataset(tmp_path / "small"), tmp_path / "small.zip")


def wait_for_log(worker: WorkerProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log(None):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{worker.log()}"
        time.sleep(0.2)


def test_a_job_whose_message_the_broker_lost_is_sent_again_and_runs_to_the_end(
    tmp_path, scale_out_settings, dataset_zip
):
    settings = scale_out_settings
    celery = create_celery(settings)
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        body = {"dataset_id": upload(alice, dataset_zip).json()["id"], "preset": "cpu-small", "config": SHORT_CONFIG}
        job_id = alice.post("/v1/jobs", json=body).json()["id"]
        # The broker loses it (a restart without persistence) before any worker took it.
        with celery.connection_for_write() as connection:
            assert connection.default_channel.queue_purge(settings.queue) == 1
        worker = WorkerProcess(settings, tmp_path / "worker.log").start()
        try:
            done = wait_for(alice, job_id, lambda j: j["state"] in ("succeeded", "failed"), 240, "the job's end")
            assert done["state"] == "succeeded", (done, worker.log())
            assert f"job {job_id}: sent again" in worker.log(None)
        finally:
            worker.stop()
    assert done["attempts"] == 1
    assert all(stage["state"] == "finished" for stage in done["stages"])


def test_a_message_delivered_twice_to_two_workers_runs_the_job_once(tmp_path, scale_out_settings, dataset_zip):
    settings = scale_out_settings.model_copy(update={"requeue_after_seconds": 600})  # the duplicate is the test's
    workers = [WorkerProcess(settings, tmp_path / f"w{i}.log", name=f"w{i}@here") for i in (1, 2)]
    with ApiServer(settings) as api, api.client(new_key(settings, "alice")) as alice:
        body = {"dataset_id": upload(alice, dataset_zip).json()["id"], "preset": "cpu-small", "config": SHORT_CONFIG}
        try:
            for worker in workers:
                worker.start()
            celery = create_celery(settings)
            job_id = alice.post("/v1/jobs", json=body).json()["id"]
            send_run_job(celery, job_id)  # the duplicate: as a broker that redelivers, or a second send
            # Each idle worker takes one of the two (one message reserved at a time), within moments of the other.
            for worker in workers:
                wait_for_log(worker, "Task pole.run_job", 60)
            done = wait_for(alice, job_id, lambda j: j["state"] in ("succeeded", "failed"), 240, "the job's end")
            assert done["state"] == "succeeded", (done, [w.log() for w in workers])
            assert waiting_messages(celery) == 0
        finally:
            for worker in workers:
                worker.stop()
    logs = [worker.log(None) for worker in workers]
    ran = [log for log in logs if f"job {job_id}: attempt with lease" in log]
    refused = [log for log in logs if f"job {job_id} not claimed (state: running)" in log]
    assert len(ran) == len(refused) == 1 and ran != refused, logs
    assert done["attempts"] == 1
    engine = create_db_engine(settings.database_url)
    with engine.connect() as conn:
        rows = conn.execute(select(JobStage.name, func.count()).group_by(JobStage.name)).all()
    engine.dispose()
    assert sorted(rows) == sorted((stage["name"], 1) for stage in done["stages"])
    assert all(stage["state"] == "finished" for stage in done["stages"])
