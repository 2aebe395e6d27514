"""Device choice, the arithmetic precision of a device, and seeding: what every torch stage does first."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# /proc/cpuinfo flags of the instructions that make oneDNN's bfloat16 convolutions and matmuls faster
# than float32 ones. Without them torch still runs bfloat16 autocast, but by conversion: slower.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} asked for, but no CUDA device is available; use device='cpu' or 'auto'")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a generator for data order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class Precision:
    """The arithmetic of a stage's forward passes: `name` a key of DTYPES, `reason` why it was chosen."""

    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self, device: torch.device):
        """Autocast to this precision on `device`; float32 runs as it is."""
        if self.name == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)

    def record(self) -> dict[str, str]:
        return {"name": self.name, "reason": self.reason}


FLOAT32 = Precision("float32", "float32 asked for")


def cpu_bf16_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The BF16_CPU_FLAGS in the text of /proc/cpuinfo; this machine's when not given, where torch runs them.

    Empty where the file is missing (not Linux) or lists no such flag (not x86, an older x86), and on
    this machine also where torch's kernels run below AVX-512 (ATEN_CPU_CAPABILITY lowered, or a build
    without it) or without oneDNN, which holds the bfloat16 convolutions.
    """
    if cpuinfo is None:
        if not torch.backends.mkldnn.is_available() or "AVX512" not in torch.backends.cpu.get_cpu_capability():
            return ()
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return ()
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
            break  # every core of a machine lists the same flags
    return tuple(flag for flag in BF16_CPU_FLAGS if flag in flags)


def pick_precision(setting: str, device: torch.device, cpu_flags: tuple[str, ...] | None = None) -> Precision:
    """The precision `setting` (a key of DTYPES, or "auto") means on `device`.

    "auto" picks the fastest path measured (README, bench/make_cams.py): float16 autocast on CUDA,
    bfloat16 on a CPU with bfloat16 instructions (`cpu_flags`, read from the machine when None),
    float32 elsewhere. A named precision is used on any device as asked (bfloat16 autocast runs on
    every CPU, only slower without those instructions).
    """
    if setting in DTYPES:
        return Precision(setting, f"{setting} asked for")
    if setting != "auto":
        raise ValueError(f"unknown precision {setting!r}; choose one of auto, {', '.join(DTYPES)}")
    if device.type == "cuda":
        return Precision("float16", "auto: float16 autocast on CUDA")
    if device.type == "cpu":
        found = cpu_bf16_flags() if cpu_flags is None else cpu_flags
        if found:
            return Precision("bfloat16", f"auto: the CPU has {', '.join(found)}")
        return Precision("float32", f"auto: the CPU has none of {', '.join(BF16_CPU_FLAGS)}")
    return Precision("float32", f"auto: float32 on {device.type}")
