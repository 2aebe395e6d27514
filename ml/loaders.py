"""Images as tensors for the torch stages: training augmentation and plain full-size reads.

Images stay un-normalised floats in [0, 1] here. The CAM network gets them ImageNet-normalised
(`ml.models.backbone.imagenet_normalize`); CLIP gets the same [0, 1] pixels and normalises them with its own
statistics (FrozenClip.encode_images), so masked images are built before any normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.data import ImageRecord
from ml.data.images import READ_ERRORS, ImageError, read_image, read_mask
from ml.data.palette import IGNORE
from ml.spec.config import AugmentConfig
from ml.spec.layout import mask_name


def to_tensor01(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).float().div_(255)


def images_to_tensor01(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Same-sized (H, W, 3) uint8 RGB images -> (B, 3, H, W) float in [0, 1] on `device`."""
    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float() / 255.0


def multi_hot(tags: Sequence[int], num_classes: int) -> torch.Tensor:
    """1-based tags -> (K,) float multi-hot vector."""
    label = torch.zeros(num_classes)
    label[[t - 1 for t in tags]] = 1.0
    return label


def augment(rgb: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random long-side resize, horizontal flip, then a random crop_size square crop padded with 0;
    returns the crop and its (crop_size, crop_size) float mask, 1 where the crop is padding."""
    plan = _draw_crop(rgb.shape[:2], config, rng)
    return _apply_crop(plan, rgb, Image.BILINEAR, 0), _padding(plan)


def augment_with_mask(
    rgb: np.ndarray, mask: np.ndarray, config: AugmentConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """`augment` of an image and its (H, W) label mask alike; the mask is resized nearest and padded with IGNORE."""
    if mask.shape != rgb.shape[:2]:
        raise ImageError(f"the mask is {mask.shape[1]}x{mask.shape[0]} px, its image {rgb.shape[1]}x{rgb.shape[0]}")
    plan = _draw_crop(rgb.shape[:2], config, rng)
    return _apply_crop(plan, rgb, Image.BILINEAR, 0), _apply_crop(plan, mask, Image.NEAREST, IGNORE)


@dataclass(frozen=True)
class _CropPlan:
    """One draw of the augmentation's randomness, so that an image and its mask get the same."""

    size: tuple[int, int]  # (width, height) after the random resize
    flip: bool
    rows: tuple[int, int, int]  # (source offset, destination offset, length), see _crop_axis
    cols: tuple[int, int, int]
    crop: int


def _draw_crop(shape: tuple[int, int], config: AugmentConfig, rng: np.random.Generator) -> _CropPlan:
    height, width = shape
    low, high = config.resize_long
    long_side = int(rng.integers(low, high + 1))
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    flip = bool(config.hflip and rng.random() < 0.5)
    rows, cols = (_crop_axis(n, config.crop_size, rng) for n in (size[1], size[0]))
    return _CropPlan(size, flip, rows, cols, config.crop_size)


def _apply_crop(plan: _CropPlan, pixels: np.ndarray, resample: int, fill: int) -> np.ndarray:
    pixels = np.asarray(Image.fromarray(pixels).resize(plan.size, resample))
    if plan.flip:
        pixels = pixels[:, ::-1]
    out = np.full((plan.crop, plan.crop, *pixels.shape[2:]), fill, dtype=pixels.dtype)
    # Per axis: a window of the image when it is larger than the crop, else a place for it in the crop.
    (src_y, dst_y, len_y), (src_x, dst_x, len_x) = plan.rows, plan.cols
    out[dst_y : dst_y + len_y, dst_x : dst_x + len_x] = pixels[src_y : src_y + len_y, src_x : src_x + len_x]
    return out


def _padding(plan: _CropPlan) -> np.ndarray:
    padding = np.ones((plan.crop, plan.crop), np.float32)
    (_, dst_y, len_y), (_, dst_x, len_x) = plan.rows, plan.cols
    padding[dst_y : dst_y + len_y, dst_x : dst_x + len_x] = 0
    return padding


def _crop_axis(size: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(source offset, destination offset, length) of a random crop along one axis."""
    if size >= crop:
        return int(rng.integers(0, size - crop + 1)), 0, crop
    return 0, int(rng.integers(0, crop - size + 1)), size


class TrainImages(torch.utils.data.Dataset):
    """Augmented crops and multi-hot labels for the training stages.

    An image that cannot be read comes back with ok=False (and a black crop), so that the stage can
    drop it from the run instead of failing. Augmentation draws from a generator seeded by
    (seed, epoch, index): the same crops whatever the number of loader workers.
    """

    def __init__(self, records: Sequence[ImageRecord], num_classes: int, config: AugmentConfig, seed: int = 0):
        self.records, self.num_classes, self.config, self.seed = list(records), num_classes, config, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        error = ""
        try:
            crop, padding = augment(read_image(record.image), self.config, rng)
        except READ_ERRORS as err:
            size = self.config.crop_size
            crop, padding = np.zeros((size, size, 3), np.uint8), np.ones((size, size), np.float32)
            error = f"unreadable image: {err}"
        return {
            "image": to_tensor01(crop),  # (3, C, C) in [0, 1]
            "padding": torch.from_numpy(padding)[None],  # (1, C, C), 1 where the crop is padding
            "label": multi_hot(record.tags, self.num_classes),  # (K,)
            "id": record.id,
            "ok": not error,
            "error": error,
        }


class TrainMasks(torch.utils.data.Dataset):
    """The same augmented crop of each image and of its label mask (`masks_dir`/<id>.png; 255 where
    the crop was padded), for the segmenter. Unreadable files come back with ok=False, as in TrainImages."""

    def __init__(self, records: Sequence[ImageRecord], masks_dir: Path, config: AugmentConfig, seed: int = 0):
        self.records, self.masks_dir, self.config, self.seed = list(records), masks_dir, config, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        error = ""
        try:
            mask = read_mask(self.masks_dir / mask_name(record.id))
            crop, mask_crop = augment_with_mask(read_image(record.image), mask, self.config, rng)
        except READ_ERRORS as err:
            size = self.config.crop_size
            crop, mask_crop = np.zeros((size, size, 3), np.uint8), np.full((size, size), IGNORE, np.uint8)
            error = f"unreadable image or mask: {err}"
        return {
            "image": to_tensor01(crop),  # (3, C, C) in [0, 1]
            "mask": torch.from_numpy(mask_crop.astype(np.int64)),  # (C, C) labels, 255 ignored
            "id": record.id,
            "ok": not error,
            "error": error,
        }


def train_loader(dataset: TrainImages, batch_size: int, generator: torch.Generator, num_workers: int = 0):
    """Shuffled batches; the last one may be short (a dataset smaller than a batch is one short batch)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        num_workers=num_workers,
        drop_last=False,
    )
