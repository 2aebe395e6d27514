"""/readyz counts the live workers (app/live_workers.py) and needs one unless POLE_READY_NEEDS_WORKER=false."""

from __future__ import annotations

import os
import time

from sqlalchemy import select

from app.db import create_db_engine, make_sessionmaker
from app.live_workers import record_worker_heartbeat
from app.models import Worker, utcnow
from tests.app.service import ApiServer, WorkerProcess, make_settings


def readiness(api: ApiServer) -> tuple[int, str]:
    with api.client() as anonymous:
        response = anonymous.get("/readyz")
    return response.status_code, response.json()["checks"]["workers"]


def wait_for_readiness(api: ApiServer, expected: tuple[int, str], timeout: float) -> float:
    """Seconds until /readyz answers `expected` (status, workers)."""
    start = time.monotonic()
    while (seen := readiness(api)) != expected:
        assert time.monotonic() - start < timeout, f"/readyz still says {seen}, not {expected}"
        time.sleep(0.1)
    return time.monotonic() - start


def worker_rows(settings) -> list[Worker]:
    engine = create_db_engine(settings.database_url)
    with make_sessionmaker(engine)() as session:
        rows = list(session.scalars(select(Worker)))
    engine.dispose()
    return rows


def test_readiness_follows_a_real_worker_through_crash_restart_and_stop(tmp_path):
    settings = make_settings(tmp_path / "data")  # heartbeat every 0.5 s, stale after 4 s
    with ApiServer(settings) as api:
        assert readiness(api) == (503, "0 alive")
        worker = WorkerProcess(settings, tmp_path / "worker.log", name="w1@here").start()
        try:
            wait_for_readiness(api, (200, "1 alive"), 10)
            [row] = worker_rows(settings)
            assert (row.name, row.pid, row.queue) == ("w1@here", worker.process.pid, settings.queue)

            worker.kill()  # no word to anyone: its row stays until its heartbeat is stale
            waited = wait_for_readiness(api, (503, "0 alive"), 15)
            assert waited > 1, "a killed worker counts until its heartbeat is stale"

            worker.start()  # the same name takes over its previous life's row
            wait_for_readiness(api, (200, "1 alive"), 10)
            assert [r.pid for r in worker_rows(settings)] == [worker.process.pid]
        finally:
            worker.stop()
        assert readiness(api) == (503, "0 alive")  # a clean stop removes the row at once
        assert worker_rows(settings) == []


def test_only_workers_of_this_queue_count_and_an_api_only_deployment_may_opt_out(tmp_path):
    settings = make_settings(tmp_path / "data", ready_needs_worker=False)
    with ApiServer(settings) as api:
        assert readiness(api) == (200, "0 alive")
        sessions = make_sessionmaker(create_db_engine(settings.database_url))
        beat = {"hostname": "elsewhere", "pid": os.getpid(), "started_at": utcnow(), "held_weights": None}
        record_worker_heartbeat(sessions, name="other-deployment@x", queue="other", **beat)
        assert readiness(api) == (200, "0 alive")
        record_worker_heartbeat(sessions, name="ours@x", queue=settings.queue, **beat)
        assert readiness(api) == (200, "1 alive")
