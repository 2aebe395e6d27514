"""Label masks as 8-bit palette PNGs: the file holds class indices, viewers show VOC colours."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255  # mask label of pixels no class is scored on (object outlines, uncertain areas)
IGNORE_NAME = "ignored"  # label 255's name in a labelmap.txt, as datumaro's VOC label set names it


def _bitget_palette() -> np.ndarray:
    """The standard VOC colour map: the bits of the index are spread over R, G and B, high bits first."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        rgb = [0, 0, 0]
        bits = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        palette[index] = rgb
    return palette


VOC_PALETTE = _bitget_palette()  # (256, 3) uint8; read-only so no caller can change another's colours
VOC_PALETTE.flags.writeable = False


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise ValueError(f"mask values must lie in 0..255, got {mask.min()}..{mask.max()}")
        mask = mask.astype(np.uint8)
    return mask


def save_mask_png(mask: np.ndarray, path: str | Path) -> None:
    """Write an (H, W) label mask as a palette PNG whose pixel values are the labels themselves."""
    mask = np.ascontiguousarray(_check_mask(mask))
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    image.putpalette(VOC_PALETTE.tobytes())
    image.save(Path(path), format="PNG")


def colorize(mask: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 RGB in the VOC colours."""
    return VOC_PALETTE[_check_mask(mask)]


def labelmap_txt(label_names: Sequence[str]) -> str:
    """The labelmap.txt of CVAT's "Segmentation mask 1.1" format: background first, then label i on line i,
    then the ignore label: an importer refuses a mask whose colours the labelmap does not all name."""
    lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
    for label, name in [*enumerate(label_names, start=1), (IGNORE, IGNORE_NAME)]:
        r, g, b = VOC_PALETTE[label]
        lines.append(f"{name}:{r},{g},{b}::")
    return "\n".join(lines) + "\n"
