"""The machine a benchmark ran on, named beside its figures (the CPU changes from one machine to the next)."""

from __future__ import annotations

import platform
import subprocess


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (Linux), else the platform's processor string."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name:")]
    return names[0] if names else platform.processor() or "unknown CPU"
