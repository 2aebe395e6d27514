"""train_irn: IRNet's boundary branch on a frozen ResNet, taught by the seeds (METHOD.md stage 7).

Pairs of stride-4 pixels within `radius` whose seeds agree (both background, or the same class)
pull their path affinity to 1, pairs of different labels push it to 0; pairs touching a 255 seed
teach nothing. Crops are IRNet's: random rescale, horizontal flip, random crop (image padded with
the mean colour, seeds with 255).

The frozen backbone is ImageNet's (`models.irn_weights`), or with `irn_weights = "cam"` the
backbone of the trained CAM network (where no ImageNet weights exist); stage.json says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.data import ImageRecord
from ml.data.images import READ_ERRORS, read_image, read_mask
from ml.data.palette import IGNORE
from ml.device import pick_device, seed_everything
from ml.models.backbone import IMAGENET_MEAN, imagenet_normalize
from ml.models.cam_net import load_cam_net
from ml.models.irn import EdgeNet, affinity_loss, path_affinities, save_edge_net
from ml.runtime import StageContext, atomic_dir, sha256_file, write_json, write_stage_record
from ml.spec.config import ConfigError, config_to_dict
from ml.spec.layout import CHECKPOINT, TRAINING_LOG, mask_name
from ml.spec.registry import final_cam_stage
from ml.training import autocast, check_finite, poly_sgd, training_images, usable_batch


def stride4_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (ceil(H/4), ceil(W/4)): the label at the centre of each 4x4 cell (nearest)."""
    rows = np.minimum(np.arange(-(-labels.shape[0] // 4)) * 4 + 2, labels.shape[0] - 1)
    cols = np.minimum(np.arange(-(-labels.shape[1] // 4)) * 4 + 2, labels.shape[1] - 1)
    return labels[np.ix_(rows, cols)]


def seed_crop(
    image: np.ndarray, seeds: np.ndarray, crop: int, rescale: tuple[float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale, flip and crop -> ((crop, crop, 3) float32 image in [0, 1], (crop/4, crop/4) seeds)."""
    height, width = seeds.shape
    scale = rng.uniform(*rescale)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    seeds = np.asarray(Image.fromarray(seeds).resize(size, Image.NEAREST))
    if rng.random() < 0.5:
        image, seeds = image[:, ::-1], seeds[:, ::-1]
    pixels = image.astype(np.float32) / 255.0
    out_image = np.empty((crop, crop, 3), np.float32)
    out_image[:] = IMAGENET_MEAN  # padding in the mean colour: 0 once normalised
    out_seeds = np.full((crop, crop), IGNORE, np.uint8)
    (sy, dy, ly), (sx, dx, lx) = (_crop_axis(n, crop, rng) for n in seeds.shape)
    out_image[dy : dy + ly, dx : dx + lx] = pixels[sy : sy + ly, sx : sx + lx]
    out_seeds[dy : dy + ly, dx : dx + lx] = seeds[sy : sy + ly, sx : sx + lx]
    return out_image, stride4_labels(out_seeds)


def _crop_axis(size: int, crop: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """(source offset, destination offset, length) of a random crop along one axis."""
    if size >= crop:
        return int(rng.integers(0, size - crop + 1)), 0, crop
    return 0, int(rng.integers(0, crop - size + 1)), size


class SeedCrops(torch.utils.data.Dataset):
    """Augmented (image, stride-4 seeds) crops; an unreadable image comes back with ok=False."""

    def __init__(self, records: Sequence[ImageRecord], seeds_dir: Path, crop: int, rescale, seed: int = 0):
        self.records, self.seeds_dir, self.crop, self.rescale, self.seed = list(records), seeds_dir, crop, rescale, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rng = np.random.default_rng((self.seed, self.epoch, index))
        error = ""
        try:
            image, seeds = seed_crop(
                read_image(record.image), read_mask(self.seeds_dir / mask_name(record.id)), self.crop, self.rescale, rng
            )
        except READ_ERRORS as err:
            error = f"train_irn: unreadable image or seeds: {err}"
            image = np.zeros((self.crop, self.crop, 3), np.float32)
            seeds = np.full((-(-self.crop // 4),) * 2, IGNORE, np.uint8)
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1),  # (3, crop, crop)
            "seeds": torch.from_numpy(seeds.astype(np.int64)),  # (crop/4, crop/4)
            "id": record.id,
            "ok": not error,
            "error": error,
        }


IRN_DIVERGED_HINT = (
    "the frozen backbone's features overflow or the boundary branch diverged; with models.irn_weights='cam' "
    "check train_pole's loss log (set train_pole.max_grad_norm) or lower train_irn.lr"
)


def build_edge_net(ctx: StageContext) -> tuple[EdgeNet, dict]:
    """The boundary network with its frozen backbone, and a record of where that backbone came from."""
    models = ctx.config.models
    if models.irn_weights != "cam":
        net = EdgeNet(models.irn_backbone, models.irn_weights)
        return net, {"source": "weights", **net.backbone.weights.record()}
    checkpoint = ctx.checkpoint(final_cam_stage(ctx.config))
    cam_net, saved = load_cam_net(checkpoint)
    backbone = saved["model_args"]["backbone"]
    if backbone != models.irn_backbone:
        raise ConfigError(
            f"models.irn_weights='cam' reuses the CAM network's {backbone}, but models.irn_backbone="
            f"{models.irn_backbone!r}; set models.irn_backbone to {backbone!r}"
        )
    net = EdgeNet(backbone, "random")
    net.backbone.load_state_dict(cam_net.backbone.state_dict())
    record = {
        "source": "cam",
        "note": "frozen backbone taken from the trained CAM network (no ImageNet weights configured)",
        "checkpoint": f"{checkpoint.parent.name}/{CHECKPOINT}",
        "sha256": sha256_file(checkpoint),
    }
    return net, record


def train_step(net: EdgeNet, x01: torch.Tensor, seeds: torch.Tensor, radius: int, device) -> tuple:
    """Forward and loss of one batch of crops in [0, 1]: (loss, its three parts)."""
    with autocast(device):
        logits = net(imagenet_normalize(x01))  # (B, h, w)
    boundary = torch.sigmoid(logits.float())
    return affinity_loss(path_affinities(boundary, radius), seeds, radius)


def run(ctx: StageContext) -> None:
    config = ctx.config.train_irn
    generator = seed_everything(ctx.config.seed)
    device = pick_device(ctx.config.device)
    net, backbone_record = build_edge_net(ctx)
    net = net.to(device).train()
    crops = SeedCrops(
        training_images(ctx), ctx.stage_dir("make_seeds"), config.crop_size, config.rescale, ctx.config.seed
    )
    loader = torch.utils.data.DataLoader(
        crops, batch_size=config.batch_size, shuffle=True, generator=generator, num_workers=ctx.config.num_workers
    )
    total = config.epochs * len(loader)
    optimizer, schedule = poly_sgd([{"params": net.trainable_parameters(), "lr": config.lr}], config.optim, total)
    log, step = [], 0
    for epoch in range(config.epochs):
        crops.epoch = epoch
        losses = []
        for batch in loader:
            usable = usable_batch(ctx, batch, device)
            if usable is not None:
                loss, parts = train_step(net, usable["image"], usable["seeds"], config.radius, device)
                check_finite(loss, ctx.stage, epoch, step, IRN_DIVERGED_HINT)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append({"loss": float(loss.detach()), **parts})
            schedule.step()
            step += 1
            ctx.progress(step / total, f"epoch {epoch + 1}/{config.epochs}")
        if losses:
            log.append({"epoch": epoch + 1, **{k: float(np.mean([x[k] for x in losses])) for k in losses[0]}})
    with atomic_dir(ctx.stage_dir()) as out:
        digest = save_edge_net(out / CHECKPOINT, net, config_to_dict(ctx.config), frozen_backbone=backbone_record)
        write_json(out / TRAINING_LOG, log)
        write_stage_record(
            out,
            ctx,
            images=len(crops),
            weights={"irn_backbone": backbone_record},
            checkpoints={CHECKPOINT: digest},
            device=str(device),
        )
