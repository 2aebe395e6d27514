"""bench/api_load.py end to end in its smoke size: a real `pole serve`, a training job, a few pollers.
Figures only; the latency target is the benchmark's to show, not a test's to assert."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "api_load.py"
SMOKE = ["--clients", "3", "--seconds", "3", "--images", "24"]


def run_env(tmp_path: Path) -> dict[str, str]:
    """The benchmark makes its data directory under TMPDIR, here `tmp_path`, and removes it on its way out."""
    return {**os.environ, "TMPDIR": str(tmp_path)}


def benchmark_dirs(tmp_path: Path) -> list[Path]:
    return list(tmp_path.glob("pole-api-load-*"))  # torch keeps caches of its own beside them


def processes_under(folder: Path) -> list[int]:
    marker = f"POLE_DATA_DIR={folder}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0") if proc.name.isdigit() else []
        except OSError:
            continue
        if any(entry.startswith(marker) for entry in environ):
            found.append(int(proc.name))
    return found


def test_a_smoke_run_reports_every_figure_with_no_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH), *SMOKE, "--baseline"],
        env=run_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("errors 0 (none)") == 2, out  # while the job trains, then with nothing running
    assert out.count("latency ms: p50") == 2 and "p99" in out and "max" in out
    assert "job: running train_cam" in out and "warning" not in result.stderr  # it trained meanwhile
    assert "p99 while training / idle" in out
    assert "CPU: " in out and "worker" in out
    assert benchmark_dirs(tmp_path) == [] and processes_under(tmp_path) == []


def test_ctrl_c_stops_the_service_and_removes_its_data(tmp_path):
    bench = subprocess.Popen(
        [sys.executable, "-u", str(BENCH), *SMOKE[:-2], "--seconds", "120", "--images", "24"],
        env=run_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in bench.stdout:
            if "waiting until it trains" in line:  # the service runs and the job is queued
                break
        assert processes_under(tmp_path)
        bench.send_signal(signal.SIGINT)
        _, err = bench.communicate(timeout=120)
    finally:
        bench.kill()
        bench.wait()
    assert bench.returncode == 130, err
    assert "interrupted; the service is stopped" in err
    assert benchmark_dirs(tmp_path) == [] and processes_under(tmp_path) == []
