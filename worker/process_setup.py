"""How a worker's job process shares its machine with the API: behind it in the CPU queue, and with a
core left to it.

`pole serve` runs the API and a `pole worker` on one machine, and a training job takes every core
torch is given. The pool process that runs jobs (forked before it imports torch) therefore starts
- niced by POLE_WORKER_NICE (default 10): when the API and training both want a core, the kernel
  serves the API first; when the API is idle, training has the CPU;
- with POLE_WORKER_THREADS torch threads (unset: OMP_NUM_THREADS when that is set, else torch's own
  choice, every core, so runs keep the demo's figures and speed). Threads that meet at a barrier after
  every operation keep waking up and taking cores back, whatever their niceness; on a small machine
  shared with a busy API, cores - 1 leaves the API a core.
Measured with bench/api_load.py on 2 AMD EPYC cores, 50 clients polling a training job every 0.5 s
beside a process busy 65% of one core: p99 154-264 ms with nice 10 alone, 194 ms with nice 19 alone,
48-73 ms with one torch thread. The price: alone on the machine, one thread trains 25% slower than
two (21-22 against 27-29 epochs a minute); under polling it trains as fast.
Both apply to every `pole worker`, the one `pole serve` starts and those on machines of their own (set
POLE_WORKER_THREADS to the core count where nothing else runs). The worker's main process keeps its
priority: it supervises the pool and requeues the jobs of dead workers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from celery import signals
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("pole.worker")


class WorkerProcessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POLE_WORKER_", extra="ignore")

    nice: int = Field(default=10, ge=0, le=19)  # added to the job process's niceness; 0 leaves it as started
    threads: int | None = Field(default=None, ge=1)  # torch intra-op threads of a job


def torch_threads(settings: WorkerProcessSettings, environ: Mapping[str, str], usable_cores: int) -> int | None:
    """None: torch's own choice (every core). The default keeps a run's numbers and speed those of the
    published demo; set POLE_WORKER_THREADS to cores - 1 where the API shares a small, busy machine."""
    if settings.threads is not None:
        return settings.threads
    if environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"])
    return None


@signals.celeryd_init.connect
def _check_settings(**_kwargs) -> None:
    """A bad value stops `pole worker` as it starts (Celery only logs what a pool process's setup raises)."""
    try:
        WorkerProcessSettings()
    except ValidationError as err:
        problems = "; ".join(f"POLE_WORKER_{e['loc'][0]}".upper() + f": {e['msg']}" for e in err.errors())
        raise SystemExit(f"error: bad POLE_WORKER_* setting: {problems}") from None


@signals.worker_process_init.connect
def _share_the_machine(**_kwargs) -> None:
    """In the pool process, before any job: the threads it makes from here on (torch's, the heartbeat)
    inherit its niceness, and torch reads OMP_NUM_THREADS when a job first imports it."""
    settings = WorkerProcessSettings()
    cores = len(os.sched_getaffinity(0))
    threads = torch_threads(settings, os.environ, cores)
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    niceness = os.nice(settings.nice)
    log.info(
        "job process %d: niceness %d, %s torch threads of %d usable cores",
        os.getpid(),
        niceness,
        threads or "all",
        cores,
    )
