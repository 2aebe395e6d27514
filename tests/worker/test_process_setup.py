"""The job process gives way to the API: niced (its later threads too), torch threads as set; the
worker's main process keeps its priority, and a bad setting stops `pole worker` at its start."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.app.service import WorkerProcess, parent_of
from worker.process_setup import WorkerProcessSettings, torch_threads


def niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])  # field 19, "nice"


def command_line(pid: int) -> bytes:
    """Empty for a process that has exited (or is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pool_of(pid: int) -> list[int]:
    """The worker's pool processes: its live children but the scan of the weights it holds (worker.held_weights)."""
    children = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and parent_of(int(p.name)) == pid]
    return [child for child in children if (command := command_line(child)) and b"worker.held_weights" not in command]


def test_the_job_process_runs_niced_and_the_main_process_does_not(settings, tmp_path):
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        deadline = time.monotonic() + 30
        while not (pool := pool_of(worker.process.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        started_at = niceness(os.getpid())
        assert niceness(worker.process.pid) == started_at
        assert [niceness(pid) for pid in pool] == [min(19, started_at + 10)]
        deadline = time.monotonic() + 30
        while "torch threads" not in worker.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"job process {pool[0]}: niceness {min(19, started_at + 10)}" in worker.log()
    finally:
        worker.stop()


def test_torch_gets_the_setting_else_omp_num_threads_else_its_own_choice():
    unset, two = WorkerProcessSettings(threads=None), WorkerProcessSettings(threads=2)
    assert torch_threads(two, {"OMP_NUM_THREADS": "8"}, usable_cores=16) == 2
    assert torch_threads(unset, {"OMP_NUM_THREADS": "8"}, usable_cores=16) == 8
    assert torch_threads(unset, {}, usable_cores=16) is None
    assert torch_threads(unset, {"OMP_NUM_THREADS": "0"}, usable_cores=4) is None
    assert torch_threads(unset, {"OMP_NUM_THREADS": "many"}, usable_cores=4) is None


SETUP_THEN_REPORT = """
import os, threading
from worker.process_setup import _share_the_machine
_share_the_machine()
import torch
seen = []
thread = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
thread.start(); thread.join()
print(os.getpriority(os.PRIO_PROCESS, 0), seen[0], torch.get_num_threads())
"""


def test_the_settings_reach_torch_and_the_threads_started_later():
    env = {**os.environ, "POLE_WORKER_NICE": "3", "POLE_WORKER_THREADS": "1", "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-c", SETUP_THEN_REPORT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
    assert result.stdout.split() == [str(expected), str(expected), "1"]


def test_a_bad_setting_stops_the_worker_as_it_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLE_")}
    env.update(POLE_DATA_DIR=str(tmp_path / "data"), POLE_WORKER_NICE="-5")
    result = subprocess.run(
        [sys.executable, "-m", "pole.cli", "worker", "--name", "bad@here"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "POLE_WORKER_NICE" in result.stderr and "greater than or equal to 0" in result.stderr
