"""`pole serve` and its embedded worker live and die together, as real processes on a real data directory.

serve restarts a worker that died (and /readyz says so meanwhile), the worker dies with serve even on
`kill -9`, a restart resumes the job the crash interrupted, and never do two embedded workers share a
data directory.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.app.conftest import new_key
from tests.app.service import (
    FAST_CONFIG,
    REDIS_URL,
    ServeProcess,
    WorkerProcess,
    make_dataset_zip,
    make_settings,
    processes_using,
    require_redis,
    settings_env,
    small_dataset,
    upload,
    wait_for,
)
from worker.embedded_lock import LOCK_FILE_NAME

ENDED = ("succeeded", "failed", "cancelled")
# train_pole long enough to be caught in the middle, after the stages before it finished.
LONG_TRAIN_POLE = {**FAST_CONFIG, "train_pole": {"epochs": 10, "batch_size": 2}}


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


def readiness(serve: ServeProcess) -> tuple[int, dict]:
    response = httpx.get(f"{serve.url}/readyz", timeout=5)
    return response.status_code, response.json()["checks"]


@pytest.fixture
def settings(tmp_path):
    return make_settings(tmp_path / "data")


@pytest.fixture
def dataset_zip(tmp_path):
    return make_dataset_zip(small_dataset(tmp_path / "small", images=6), tmp_path / "small.zip")


@pytest.fixture
def serve(settings, tmp_path):
    """Starts `pole serve` processes on `settings` (all logging to serve.log); stops those still running."""
    started: list[ServeProcess] = []

    def start(*args: str, ready: str = "/readyz") -> ServeProcess:
        started.append(ServeProcess(settings, tmp_path / "serve.log", *args))
        return started[-1].start(ready)

    yield start
    for process in started:
        process.stop()


def test_kill_9_of_serve_takes_its_worker_along_and_a_restart_resumes_the_job(settings, serve, dataset_zip):
    first = serve()
    key = new_key(settings, "alice")
    with first.client(key) as alice:
        dataset_id = upload(alice, dataset_zip).json()["id"]
        body = {"dataset_id": dataset_id, "preset": "cpu-small", "config": LONG_TRAIN_POLE}
        job_id = alice.post("/v1/jobs", json=body).json()["id"]
        before = wait_for(alice, job_id, lambda j: j["stage"] == "train_pole", 300, "train_pole")
    assert len(processes_using(settings.data_dir)) == 3  # serve, its worker, the pool process running the job

    first.kill()
    killed = time.monotonic()
    wait_until(lambda: not processes_using(settings.data_dir), 10, "the worker to die with serve")
    assert time.monotonic() - killed < 5

    second = serve()
    with second.client(key) as alice:
        assert len(second.worker_pids()) == 1
        done = wait_for(alice, job_id, lambda j: j["state"] in ENDED, 300, "the resumed job")
        assert done["state"] == "succeeded" and done["attempts"] == 2, (done, second.log())
        # Resumed, not restarted: train_cam kept the times of the first attempt.
        assert done["stages"][0] == before["stages"][0]
        assert len(second.worker_pids()) == 1
        assert readiness(second) == (200, {"database": "ok", "broker": "ok", "workers": "1 alive"})


def test_a_dead_worker_is_restarted_and_readiness_says_so_meanwhile(settings, serve, dataset_zip):
    running = serve()
    assert readiness(running)[1]["workers"] == "1 alive"
    [worker] = running.worker_pids()
    key = new_key(settings, "alice")
    with running.client(key) as alice:
        dataset_id = upload(alice, dataset_zip).json()["id"]
        os.kill(worker, signal.SIGKILL)  # the worker's main process alone: its pool process must follow it

        status, checks = wait_until(lambda: (r := readiness(running))[0] == 503 and r, 10, "readiness to drop")
        assert checks == {"database": "ok", "broker": "ok", "workers": "0 alive"}
        body = {"dataset_id": dataset_id, "preset": "cpu-small", "config": FAST_CONFIG}
        job_id = alice.post("/v1/jobs", json=body).json()["id"]  # queued while no worker is alive

        wait_until(lambda: readiness(running)[0] == 200, 60, "the restarted worker")
        [restarted] = running.worker_pids()
        assert restarted != worker
        done = wait_for(alice, job_id, lambda j: j["state"] in ENDED, 300, "the job")
        assert done["state"] == "succeeded" and done["attempts"] == 1, (done, running.log())
    log = running.log(chars=None)
    assert f"(pid {worker}) was killed by SIGKILL" in log and "restarting it in 1 s (exits in a row: 1)" in log
    assert len(processes_using(settings.data_dir)) == 3  # serve, one worker, one pool process: none left behind


def test_a_second_embedded_worker_is_refused_and_serve_gives_up_beside_it(settings, serve, tmp_path):
    first = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        second = subprocess.run(
            [sys.executable, "-m", "pole.cli", "worker", "--name", "other@here"],
            env=settings_env(settings),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode != 0
        assert f"another worker (pid {first.process.pid}) is already running on {settings.data_dir}" in second.stderr

        # A serve whose worker can never start says so and exits, rather than serve jobs that would never run.
        refused = ServeProcess(settings, tmp_path / "serve.log")
        refused.start(ready="/healthz")
        assert refused.process.wait(timeout=120) != 0
        log = refused.log(chars=None)
        assert log.count("already running") == 5 and "5 failed starts in a row; giving up" in log
        assert first.process.poll() is None  # the first worker is untouched
    finally:
        first.stop()


def test_workers_on_redis_are_not_limited_to_one_per_data_dir(tmp_path):
    require_redis()
    settings = make_settings(tmp_path / "data", broker_url=REDIS_URL)
    settings.make_dirs()
    with open(settings.data_dir / LOCK_FILE_NAME, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as an embedded worker would hold it
        worker = WorkerProcess(settings, tmp_path / "worker.log", name="gpu-1@rack").start()
        worker.stop()
