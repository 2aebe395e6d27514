"""Shared fixtures. `tiny_dataset` is a generated manifest dataset small enough for CPU tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Test tensors are tiny: extra intra-op threads only fight each other (and parallel test runs) for
# the cores. Set before any test module imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_CLASSES = ("square", "circle", "triangle")
TINY_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 70, 230)}  # distinct hues, so CAMs can learn them
# Tags per image: every class appears alone and with each other class, and some images hold two.
TINY_TAGS = ((1,), (2,), (3,), (1, 2), (2, 3), (1, 3), (1,), (2,), (3,), (1, 2), (2, 3), (1, 3))


def _draw_shape(draw: ImageDraw.ImageDraw, label: int, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if label == 1:
        draw.rectangle(box, fill=fill)
    elif label == 2:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def make_tiny_dataset(root: Path, seed: int = 0) -> Path:
    """Write a manifest dataset (classes.txt, tags.csv, images/, masks/) of 12 images, 64-96 px.

    Each image is grey noise with one or two coloured shapes; the mask holds the shape labels with a
    one-pixel 255 (ignore) border around every shape, like VOC's object outlines.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(TINY_CLASSES) + "\n")
    rows = ["image,tags"]
    for index, tags in enumerate(TINY_TAGS):
        width, height = (int(v) for v in rng.integers(64, 97, size=2))
        pixels = rng.integers(90, 150, size=(height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGB")
        mask = Image.new("L", (width, height), 0)
        draw, mask_draw = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        # Two shapes go side by side in their own halves, so they never overlap.
        slots = [(0, width)] if len(tags) == 1 else [(0, width // 2), (width // 2, width)]
        for label, (left, right) in zip(tags, slots, strict=True):
            size = int(rng.integers(20, min(right - left, height) - 4))
            x0 = int(rng.integers(left + 2, right - size - 1))
            y0 = int(rng.integers(2, height - size - 1))
            box = (x0, y0, x0 + size, y0 + size)
            _draw_shape(draw, label, box, TINY_COLOURS[label])
            _draw_shape(mask_draw, label, (x0 - 1, y0 - 1, x0 + size + 1, y0 + size + 1), 255)
            _draw_shape(mask_draw, label, box, label)
        name = f"img{index:02d}"
        image.save(root / "images" / f"{name}.png")
        mask.save(root / "masks" / f"{name}.png")
        rows.append(f"{name}.png,{'|'.join(TINY_CLASSES[t - 1] for t in tags)}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root


def all_background_miou(truths, classes) -> float | None:
    """The reference floor: the mIoU of an explicit all-background prediction on these ground truths."""
    from ml.metrics import SplitConfusion

    confusion = SplitConfusion(len(classes) + 1)
    for truth in truths:
        confusion.add("all", truth, np.zeros_like(truth))
    return confusion.report(classes)["miou"]


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Path to a fresh 12-image, 3-class manifest dataset with masks (see make_tiny_dataset)."""
    return make_tiny_dataset(tmp_path / "tiny")
