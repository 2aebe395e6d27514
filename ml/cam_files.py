"""The make_cams file of one image (numpy, no torch): what eval, seeds, refine and overlays read.

`<run>/make_cams/<image id>.npz` holds
  keys    (n,) int64: the image's tagged labels (1-based), one per map, in this order;
  cam     (n, H, W) float16: full-resolution maps, each divided by its own max (values in [0, 1));
  cam_s4  (n, ceil(H/4), ceil(W/4)) float16: the same at stride 4, for IRNet's random walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CamFile:
    keys: np.ndarray
    cam: np.ndarray
    cam_s4: np.ndarray


def cam_path(run_dir: Path, image_id: str) -> Path:
    return Path(run_dir) / "make_cams" / f"{image_id}.npz"


def save_cams(path: Path, keys: np.ndarray, cam: np.ndarray, cam_s4: np.ndarray) -> None:
    if not len(keys) == len(cam) == len(cam_s4):
        raise ValueError(f"{len(keys)} keys for {len(cam)} full-resolution and {len(cam_s4)} stride-4 maps")
    np.savez_compressed(
        path, keys=np.asarray(keys, np.int64), cam=cam.astype(np.float16), cam_s4=cam_s4.astype(np.float16)
    )


def load_cams(path: Path) -> CamFile:
    """The maps come back as float32 (float16 only saves disk)."""
    with np.load(path) as data:
        return CamFile(data["keys"], data["cam"].astype(np.float32), data["cam_s4"].astype(np.float32))
