"""bench/upload_validation.py end to end in its smoke size: a real `pole serve`, one upload validated in the
background. Figures only; how fast is the benchmark's to show, not a test's to assert."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "upload_validation.py"


@pytest.mark.slow
def test_a_smoke_run_reports_every_figure_and_leaves_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCH), "--images", "300", "--size", "32", "--masks"],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "dataset: 300 images of 32x32 with masks" in out
    assert "202 after" in out and "images/s" in out and "errors 0" in out
    assert "API process RSS:" in out and "VmHWM" in out and "CPU: " in out
    assert list(tmp_path.glob("pole-upload-validation-*")) == []
