"""Which named weights this worker can load without a network, for its row in `workers` (worker.presence):
the API refuses a job whose weights no live worker holds (ml.spec.weight_tags).

The scan (ml.weights.held_weight_tags) runs in a child process, `python -m worker.held_weights`: it
imports torch, torchvision and open_clip, and the worker's main process must stay without them, since
it forks the pool processes that run jobs, which set up torch's threads themselves
(worker.process_setup), and it would carry their 700 MB for good. The scan checks that files exist
and reads none, yet costs 3.4 s of CPU and 840 MB for that while (measured on an AMD EPYC core),
nearly all of it imports: the checks take 25 ms. So it runs at start and then every REFRESH_SECONDS
(under 1% of a core), which is how long a file newly put in POLE_WEIGHTS_DIR can go unadvertised.
A thread of its own waits for it, so the heartbeat never does.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger("pole.worker")

REFRESH_SECONDS = 600
SCAN_TIMEOUT_SECONDS = 300  # the imports alone, on a machine busy training


class HeldWeightsScanner:
    """Scans at start and every REFRESH_SECONDS in a thread; `latest` is the last result (None before the first)."""

    def __init__(self) -> None:
        self.latest: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pole-held-weights", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # Not joined: a scan in progress ends with this process (it dies with its parent).
        self._stop.set()

    def _loop(self) -> None:
        while True:
            scanned = scan_held_weights()
            if scanned is not None:  # a failed refresh keeps the last list: files are rarely taken away
                self.latest = scanned
            if self._stop.wait(REFRESH_SECONDS):
                return


def scan_held_weights() -> dict | None:
    """The scan's result, or None (logged) when the child process fails."""
    command = [sys.executable, "-m", "worker.held_weights", str(os.getpid())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SCAN_TIMEOUT_SECONDS, check=True)
        return json.loads(done.stdout)
    except subprocess.CalledProcessError as err:
        log.warning("could not list the weights this worker holds: %s", err.stderr.strip()[-2000:])
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError) as err:
        log.warning("could not list the weights this worker holds: %s", err)
    return None


if __name__ == "__main__":
    from ml.weights import held_weight_tags
    from worker.lifeline import die_with_parent

    die_with_parent(int(sys.argv[1]))  # a worker killed mid-scan leaves nothing running behind it
    print(json.dumps(held_weight_tags()))
