"""One worker per data directory on the embedded queue.

The file queue is for one machine and one worker: a second one (a restarted `pole serve` beside a
worker its previous life left running, or a stray `pole worker`) would run jobs on the same cores
and, under the same name, recover the first one's running jobs as its own. The worker holds an
exclusive lock on a file in the data directory for its whole life; the kernel drops it when the
worker and its pool processes (which share the open file) are gone, however they end.
Workers on Redis are not limited: they are how the service scales out.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE_NAME = "worker.lock"

# Open for the life of the process: closing the file would release the lock.
_held: list[IO[str]] = []


class EmbeddedWorkerRunning(RuntimeError):
    """Another worker already holds the data directory."""


def hold_embedded_worker_lock(data_dir: Path) -> None:
    """Take the data directory's worker lock until this process ends, or raise EmbeddedWorkerRunning."""
    lock = open(data_dir / LOCK_FILE_NAME, "a+")  # noqa: SIM115 (held until the process ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise EmbeddedWorkerRunning(
            f"another worker (pid {holder}) is already running on {data_dir}; the embedded queue takes one "
            "worker per data directory. Stop that one (or the `pole serve` that runs it), or scale out with "
            "POLE_BROKER_URL=redis://..."
        ) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    _held.append(lock)
