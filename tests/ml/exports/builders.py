"""Final masks as a run leaves them, with the images they were made from, for the export format tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.data.palette import IGNORE, save_mask_png
from ml.exports import ExportedImage, ExportedMasks
from tests.ml.data.builders import write_image

LABEL_NAMES = ["cat", "diningtable", "tvmonitor"]
# id -> (split, (width, height)): two images of one size to batch in training, one of another size.
IMAGES = {"a1": ("train", (64, 48)), "b2": ("train", (64, 48)), "c3": ("val", (40, 30))}


@dataclass
class Run:
    masks: ExportedMasks
    labels: dict[str, np.ndarray]  # image id -> its final mask's labels
    images: Path  # the folder of <id>.jpg


def final_masks(root: Path) -> Run:
    """Each mask holds background, two classes side by side and a 255 border between them."""
    labels, images = {}, []
    for number, (image_id, (split, (width, height))) in enumerate(IMAGES.items()):
        mask = np.zeros((height, width), np.uint8)
        mask[4 : height // 2, 4 : width // 2] = number % len(LABEL_NAMES) + 1
        mask[height // 2 :, width // 2 :] = (number + 1) % len(LABEL_NAMES) + 1
        mask[height // 2 - 1, :] = IGNORE
        labels[image_id] = mask
        path = root / "final" / f"{image_id}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_mask_png(mask, path)
        write_image(root / "images" / f"{image_id}.jpg", size=(width, height), seed=number)
        images.append(ExportedImage(image_id, f"{image_id}.jpg", split, path))
    return Run(ExportedMasks(LABEL_NAMES, images, on_progress=lambda done: None), labels, root / "images")
