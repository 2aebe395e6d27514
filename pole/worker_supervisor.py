"""`pole serve`'s embedded worker: started beside the API, restarted when it dies, never left behind.

Restarts: whenever the worker exits without being asked to, it is started again after a delay of
1 s, doubled for each exit in a row (at most 30 s); a worker that ran STABLE_AFTER_SECONDS starts
the count over. A worker that exits within STARTUP_SECONDS of starting failed to start (a bad
setting, the data directory held by another worker): after MAX_FAILED_STARTS of those in a row,
serve stops and exits with an error instead of serving an API whose jobs would never run.

Never left behind: the worker runs in its own session, so a Ctrl-C reaches serve alone, which then
stops it in order (cold shutdown: the running job resumes from its last finished stage at the next
start); and it is started with `--parent-pid`, so the kernel kills it if serve dies without a word
(worker.lifeline). The kernel ties that to the thread that started the worker, which is why the
supervisor thread starts every worker and outlives each.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app.db import create_db_engine, make_sessionmaker
from app.live_workers import forget_worker
from app.settings import Settings

log = logging.getLogger("pole.serve")

FIRST_RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_AFTER_SECONDS = 300.0
STARTUP_SECONDS = 30.0
MAX_FAILED_STARTS = 5
STOP_SECONDS = 30  # for a cold shutdown, before SIGKILL


class WorkerSupervisor(threading.Thread):
    """Runs `pole worker --name NAME` until `stop()`, restarting it as the module says.

    When the worker keeps failing to start, `failure` says so and `on_give_up()` is called (from this thread).
    """

    def __init__(self, settings: Settings, name: str, on_give_up: Callable[[], None]):
        super().__init__(name="pole-worker-supervisor", daemon=True)
        self.worker_name = name
        self.on_give_up = on_give_up
        self.failure: str | None = None
        self.process: subprocess.Popen | None = None
        self._command = [sys.executable, "-m", "pole.cli", "worker", "--name", name, "--parent-pid", str(os.getpid())]
        self._sessions = make_sessionmaker(create_db_engine(settings.database_url, poolclass=NullPool))
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # between starting a worker here and stop() in another thread

    def run(self) -> None:
        exits_in_a_row = failed_starts = 0
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return
                started = time.monotonic()
                self.process = subprocess.Popen(self._command, start_new_session=True)
            code = self.process.wait()
            ran = time.monotonic() - started
            self._forget(self.process.pid)
            if self._stopping.is_set():
                return
            exits_in_a_row = exits_in_a_row + 1 if ran < STABLE_AFTER_SECONDS else 1
            failed_starts = failed_starts + 1 if ran < STARTUP_SECONDS else 0
            how = f"the embedded worker (pid {self.process.pid}) {_describe_exit(code)} after {ran:.0f} s"
            if failed_starts >= MAX_FAILED_STARTS:
                self.failure = (
                    f"{how}: {failed_starts} failed starts in a row; giving up (see the worker's messages above)"
                )
                log.error("%s", self.failure)
                self.on_give_up()
                return
            delay = min(FIRST_RESTART_DELAY_SECONDS * 2 ** (exits_in_a_row - 1), MAX_RESTART_DELAY_SECONDS)
            log.error("%s; restarting it in %.0f s (exits in a row: %d)", how, delay, exits_in_a_row)
            if self._stopping.wait(delay):
                return

    def stop(self) -> None:
        """Cold shutdown of the worker (SIGKILL past STOP_SECONDS), and no restart."""
        with self._lock:
            self._stopping.set()
            process = self.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(process.pid, signal.SIGQUIT)
        self.join(STOP_SECONDS)
        if self.is_alive() and process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            self.join()

    def _forget(self, pid: int) -> None:
        # Readiness learns now that this worker is gone, rather than once its heartbeat is stale.
        try:
            forget_worker(self._sessions, name=self.worker_name, pid=pid)
        except SQLAlchemyError as err:
            log.warning("could not remove the exited worker's row (%s); it goes stale instead", err)


def _describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"
