"""bench/random_walk.py: its dense baseline flushes denormals in every thread, and a smoke run reports every figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "random_walk.py"
THREADS = "2"  # a main thread and a pool thread: the case a main-thread-only flush misses


def denormals_left(flush_first: bool) -> int:
    """denormals_made() in a fresh 2-thread process that flushes before torch starts its threads, or after."""
    script = f"""
import sys
sys.path.insert(0, {str(BENCH.parent)!r})
import random_walk as bench
if {flush_first}:
    bench.flush_denormals()
import torch
torch.rand(512, 512) @ torch.rand(512, 512)  # starts the thread pools
if not {flush_first}:
    torch.set_flush_denormal(True)
print(bench.denormals_made())
"""
    env = {**os.environ, "OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS, "MKL_DYNAMIC": "FALSE"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


def test_flushing_before_the_threads_start_reaches_every_thread():
    assert denormals_left(flush_first=True) == 0


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="MKL runs a product on one thread on a one-core machine")
def test_flushing_after_the_threads_started_misses_theirs():
    assert denormals_left(flush_first=False) > 0


def test_a_smoke_run_reports_every_figure():
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--height",
            "40",
            "--width",
            "48",
            "--exp-times",
            "3",
            "--unflushed",
            "--squarings",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "a test product left 0 denormal entries" in out
    for figure in ("sparse:", "speed-up", "same argmax 100.00%", "footnote, dense without flushing", "total: flushed"):
        assert figure in out, figure
    assert len([line for line in out.splitlines() if "flushed" in line and "unflushed" in line]) == 3 + 1
