"""COCO instances JSON, the form detectron2, mmdetection and pycocotools' COCO() read.

annotations/instances_<split>.json   one file per split of the dataset, each with
    images        id, file_name (the image's file name in the dataset), width, height
    categories    id = label, name = the dataset's label name; background and ignore (255) are none
    annotations   one per image and class present: all of that class's pixels as compressed RLE,
                  with bbox [x, y, w, h] and area in pixels

The masks are semantic (one region per class, not per object). iscrowd is 0: COCO's crowd flag
would make detectors skip these regions in training and evaluation, and its readers decode an RLE
segmentation whatever the flag. Image and annotation ids count from 1 across all splits, so that
the files of several splits can be merged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from ml.data.images import read_mask
from ml.exports import ExportedMasks


def write_coco(folder: Path, masks: ExportedMasks) -> None:
    categories = [{"id": label, "name": name} for label, name in enumerate(masks.label_names, start=1)]
    splits: dict[str, dict] = {}
    annotation_id = 0
    for image_id, image in enumerate(masks.images, start=1):
        labels = read_mask(image.mask)
        split = splits.setdefault(image.split, {"images": [], "annotations": [], "categories": categories})
        height, width = labels.shape
        split["images"].append({"id": image_id, "file_name": image.file_name, "width": width, "height": height})
        for label in np.unique(labels):
            if 0 < label <= len(masks.label_names):  # background and ignore are no category
                annotation_id += 1
                split["annotations"].append(_annotation(annotation_id, image_id, int(label), labels == label))
        masks.on_progress(image_id)
    (folder / "annotations").mkdir()
    for name, content in splits.items():
        # Split names are plain file names: the dataset readers refuse any other.
        (folder / "annotations" / f"instances_{name}.json").write_text(json.dumps(content))


def _annotation(annotation_id: int, image_id: int, label: int, region: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(region, dtype=np.uint8))
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": label,
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        "area": int(coco_mask.area(rle)),
        "bbox": [float(v) for v in coco_mask.toBbox(rle)],
        "iscrowd": 0,
    }
