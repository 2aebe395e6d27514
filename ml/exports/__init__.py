"""Export formats of the mask archive, one module each, listed in ml.spec.registry.EXPORT_FORMATS.

A format's writer is `write(folder, masks: ExportedMasks) -> None`: it lays the run's final masks
out in `folder` in its own layout. The export stage adds the files every archive holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportedMasks:
    classes: list[str]  # label i + 1 is classes[i]; 0 is background, 255 ignore
    image_ids: list[str]  # the images exported, in order
    mask_path: Callable[[str], Path]  # image id -> its final mask (index PNG with the VOC palette)
    on_progress: Callable[[int], None]  # called with the number of masks written so far
