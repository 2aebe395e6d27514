"""Images as tensors for the torch stages: training augmentation and plain full-size reads.

Images stay un-normalised floats in [0, 1] here. The CAM network gets them ImageNet-normalised
(`ml.models.backbone.imagenet_normalize`); CLIP gets the same [0, 1] pixels and normalises them with its own
statistics (FrozenClip.encode_images), so masked images are built before any normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ml.data import ImageRecord
from ml.data.images import READ_ERRORS, read_image
from ml.spec.config import AugmentConfig


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


def augment(rgb: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random long-side resize, horizontal flip, then a random crop_size square crop padded with 0."""
    height, width = rgb.shape[:2]
    low, high = config.resize_long
    long_side = int(rng.integers(low, high + 1))
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.BILINEAR))
    if config.hflip and rng.random() < 0.5:
        rgb = rgb[:, ::-1]
    crop = config.crop_size
    out = np.zeros((crop, crop, 3), dtype=np.uint8)
    # Per axis: a window of the image when it is larger than the crop, else a place for it in the crop.
    (src_y, dst_y, len_y), (src_x, dst_x, len_x) = (_crop_axis(n, crop, rng) for n in rgb.shape[:2])
    out[dst_y : dst_y + len_y, dst_x : dst_x + len_x] = rgb[src_y : src_y + len_y, src_x : src_x + len_x]
    return out


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
            crop = augment(read_image(record.image), self.config, rng)
        except READ_ERRORS as err:
            crop, error = np.zeros((self.config.crop_size,) * 2 + (3,), dtype=np.uint8), f"unreadable image: {err}"
        return {
            "image": to_tensor01(crop),  # (3, C, C) in [0, 1]
            "label": multi_hot(record.tags, self.num_classes),  # (K,)
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
