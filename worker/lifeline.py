"""No worker outlives the `pole serve` that started it.

A worker left behind goes on running its job unseen, while the restarted service runs the same job
again beside it. So serve starts its worker with `--parent-pid`, and the worker asks the kernel to
SIGKILL it the moment serve exits, however serve exits, `kill -9` included (Linux PR_SET_PDEATHSIG;
elsewhere a thread watches the parent). Celery gives the worker's pool processes the same signal
for the worker's own death, so the whole tree goes. A job whose processes were killed is recovered
as after any crash: the restarted worker requeues the jobs its previous life left running (worker.reaper).
"""

from __future__ import annotations

import os
import signal
import threading
import time

from billiard.util import set_pdeathsig

PARENT_CHECK_SECONDS = 1.0


def die_with_parent(parent_pid: int) -> None:
    """SIGKILL this process as soon as its parent, `parent_pid`, exits (at once if it already has)."""
    try:
        set_pdeathsig(signal.SIGKILL)
    except OSError:  # not Linux
        _watch_parent(parent_pid)
        return
    if os.getppid() != parent_pid:  # it exited before the kernel was asked to watch it
        os.kill(os.getpid(), signal.SIGKILL)


def _watch_parent(parent_pid: int) -> None:
    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_SECONDS)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="pole-parent-watch", daemon=True).start()
