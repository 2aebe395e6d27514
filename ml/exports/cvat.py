"""CVAT's "Segmentation mask 1.1" layout, which CVAT (and the VOC tools) import as they are.

SegmentationClass/<id>.png           8-bit palette masks (VOC colours; 255 kept as ignore)
labelmap.txt                         background, the dataset's label names and the ignore label, with their colours
ImageSets/Segmentation/default.txt   the exported image ids
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ml.data.palette import labelmap_txt
from ml.exports import ExportedMasks


def write_cvat(folder: Path, masks: ExportedMasks) -> None:
    (folder / "SegmentationClass").mkdir(parents=True)
    (folder / "ImageSets" / "Segmentation").mkdir(parents=True)
    for index, image in enumerate(masks.images):
        shutil.copyfile(image.mask, folder / "SegmentationClass" / f"{image.id}.png")
        masks.on_progress(index + 1)
    (folder / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(f"{i}\n" for i in masks.image_ids))
    (folder / "labelmap.txt").write_text(labelmap_txt(masks.label_names))
