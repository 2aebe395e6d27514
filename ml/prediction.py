"""Labelling new images with a finished run's trained segmenter (train_seg), no tags needed.

`pole predict` and the worker's prediction runs both fill a prediction folder
(ml.spec.layout.PredictionLayout) with these two functions: `label_images` writes a mask and an
overlay per image, `write_archive` the masks in an export format of ml.spec.registry.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from ml.data.archive import zip_folder
from ml.data.images import READ_ERRORS, read_image
from ml.data.loose_images import LooseImage
from ml.data.overlays import mask_overlay_png
from ml.data.palette import save_mask_png
from ml.exports import ExportedImage, ExportedMasks
from ml.models.segmenter import predict_masks
from ml.spec.layout import PredictionLayout, archive_name
from ml.spec.registry import EXPORT_FORMATS, load
from ml.stages.export import FAILED_IMAGES_CSV

# Pixels read and run through the network together; the same-sized images of a batch share one forward
# pass (predict_masks). A GPU is kept busy by big batches (8 Mpx: 32 images of 512 x 512, a few GiB for a
# DeepLab ResNet-101); on a CPU they barely pay and cost memory.
BATCH_PIXELS = {"cuda": 8 << 20, "cpu": 2 << 20}
SPLIT = "default"  # the split the exports file predicted images under


def label_images(
    model: nn.Module,
    checkpoint: dict,
    images: Sequence[LooseImage],
    layout: PredictionLayout,
    *,
    max_pixels: int,
    on_progress: Callable[[int], None],
) -> dict[str, str]:
    """Write the mask and the overlay of each image; returns {name: reason} of those that could not be
    read. `on_progress` gets the number of images done (labelled or failed) after each batch."""
    budget = BATCH_PIXELS.get(next(model.parameters()).device.type, BATCH_PIXELS["cpu"])
    layout.masks_dir.mkdir(parents=True, exist_ok=True)
    layout.overlays_dir.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    batch: list[tuple[LooseImage, np.ndarray]] = []
    batch_pixels = 0
    for done, image in enumerate(images):
        try:
            pixels = read_image(image.path, max_pixels)
        except READ_ERRORS as err:
            failed[image.name] = str(err)
            continue
        size = pixels.shape[0] * pixels.shape[1]
        if batch and batch_pixels + size > budget:
            _label_batch(model, checkpoint, batch, layout)
            on_progress(done)
            batch, batch_pixels = [], 0
        batch.append((image, pixels))
        batch_pixels += size
    if batch:
        _label_batch(model, checkpoint, batch, layout)
    on_progress(len(images))
    return failed


def _label_batch(
    model: nn.Module, checkpoint: dict, batch: list[tuple[LooseImage, np.ndarray]], layout: PredictionLayout
) -> None:
    masks = predict_masks(model, checkpoint, [pixels for _, pixels in batch])
    for (image, pixels), mask in zip(batch, masks, strict=True):
        save_mask_png(mask, layout.mask(image.id))
        layout.overlay(image.id).write_bytes(mask_overlay_png(pixels, mask, checkpoint["classes"]))


def write_archive(
    layout: PredictionLayout,
    export_format: str,
    label_names: Sequence[str],
    images: Sequence[LooseImage],
    failed: dict[str, str],
) -> Path:
    """The masks of the labelled `images` in `export_format`'s layout, with failed_images.csv, as
    export/<format>/ and its zip; returns the zip. Written in a scratch folder and moved in zip last,
    so that a zip in place is always a whole one, also when two builds of one format race."""
    exported = [ExportedImage(i.id, i.name, SPLIT, layout.mask(i.id)) for i in images if i.name not in failed]
    layout.archive(export_format).parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{export_format}.", dir=layout.archive(export_format).parent))
    try:
        folder = scratch / export_format
        folder.mkdir()
        writer = load(EXPORT_FORMATS[export_format].writer)
        writer(folder, ExportedMasks(list(label_names), exported, on_progress=lambda _done: None))
        with open(folder / FAILED_IMAGES_CSV, "w", newline="") as f:
            rows = csv.writer(f)
            rows.writerow(("image", "reason"))
            rows.writerows(sorted(failed.items()))
        zip_folder(folder, scratch / archive_name(export_format))
        with contextlib.suppress(OSError):  # the folder of a build that won the race is already there
            folder.rename(layout.export_dir(export_format))
        os.replace(scratch / archive_name(export_format), layout.archive(export_format))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return layout.archive(export_format)
