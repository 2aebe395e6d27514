"""The worker says it is alive: a thread of its main process keeps its row in `workers` fresh
(app.live_workers), with the weights it holds (worker.held_weights), and deletes it when the worker
stops cleanly.

The main process, not a pool process: it is the one that takes jobs from the queue, and its pool
processes come and go (a job that runs out of memory takes one with it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from celery import bootsteps
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app.db import create_db_engine, make_sessionmaker
from app.live_workers import forget_worker, record_worker_heartbeat
from app.models import utcnow
from app.settings import Settings
from worker.held_weights import HeldWeightsScanner

log = logging.getLogger("pole.worker")


class PresenceStep(bootsteps.StartStopStep):
    """Writes this worker's heartbeat every `heartbeat_seconds` from its main process."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sessions = None
        self._held_weights = HeldWeightsScanner()

    def start(self, worker) -> None:
        settings: Settings = worker.app.conf.pole_settings
        # NullPool: no connection stays open in this process for a forked pool process to inherit.
        self._sessions = make_sessionmaker(create_db_engine(settings.database_url, poolclass=NullPool))
        self._thread = threading.Thread(target=self._loop, args=(worker, settings), name="pole-presence", daemon=True)
        self._held_weights.start()
        self._thread.start()

    def _loop(self, worker, settings: Settings) -> None:
        row = {
            "name": worker.hostname,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "queue": settings.queue,
            "started_at": utcnow(),
        }
        while True:
            try:
                record_worker_heartbeat(self._sessions, **row, held_weights=self._held_weights.latest)
            except SQLAlchemyError as err:  # the next beat tries again; a worker must not stop over this
                log.warning("worker heartbeat not written (%s); trying again", err)
            if self._stop.wait(settings.heartbeat_seconds):
                return

    def stop(self, worker) -> None:
        self._stop.set()
        self._held_weights.stop()
        if self._thread is None:
            return
        self._thread.join(timeout=10)
        try:
            forget_worker(self._sessions, name=worker.hostname, pid=os.getpid())
        except SQLAlchemyError as err:  # the row then goes stale, which readiness reads the same way
            log.warning("worker row not removed (%s)", err)

    # A cold shutdown (SIGQUIT: how `pole serve` stops its worker) ends the worker as surely as a warm one.
    terminate = stop
