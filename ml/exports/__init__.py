"""Export formats of the mask archive, one module each, listed in ml.spec.registry.EXPORT_FORMATS.

A format's writer is `write(folder, masks: ExportedMasks) -> None`: it lays the run's final masks
out in `folder` in its own layout. The export stage adds the files every archive holds.

Writers name the labels as the dataset names them (`label_names`, "diningtable"), not with the
readable words the prompts use ("dining table"): the tool that loads an export compares names with
the labels it already has, and those came from the same dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportedImage:
    id: str
    file_name: str  # the image's file name in the dataset (what COCO's images list names)
    split: str
    mask: Path  # its final mask: index PNG with the VOC palette, 0 background, 255 ignore


@dataclass(frozen=True)
class ExportedMasks:
    label_names: list[str]  # label i + 1 is label_names[i]; 0 is background, 255 ignore
    images: list[ExportedImage]  # the images exported, in order
    on_progress: Callable[[int], None]  # called with the number of masks written so far

    @property
    def image_ids(self) -> list[str]:
        return [image.id for image in self.images]
