"""refine: IRNet's random walk of the stride-4 CAMs along the learned boundaries (METHOD.md stage 8).

Per image: boundary map B of the image (and its mirror), scores x = cam_s4 * (1 - B) walked
2**exp_times steps with the sparse transition matrix (ml/random_walk.py: memory linear in the
pixel count, any image size), upsampled x4, divided by their global max, then argmax against a
constant background score `bg_threshold`. Masks are palette PNGs in refine/<image id>.png.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ml.data.palette import save_mask_png
from ml.device import pick_device, seed_everything
from ml.loaders import images_to_tensor01
from ml.models.backbone import imagenet_normalize
from ml.models.irn import EdgeNet, load_edge_net
from ml.random_walk import random_walk
from ml.runtime import StageContext, atomic_dir, sha256_file, write_stage_record
from ml.spec.layout import CHECKPOINT, mask_name


def walk_labels(walked: torch.Tensor, keys: np.ndarray, size: tuple[int, int], bg_threshold: float) -> np.ndarray:
    """(n, h4, w4) walked scores -> (H, W) uint8 labels (0 or one of keys)."""
    height, width = size
    up = F.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[0, :, :height, :width]
    peak = up.max()
    up = up / peak if peak > 0 else up
    scores = torch.cat([torch.full_like(up[:1], bg_threshold), up])  # (1 + n, H, W); background first wins ties
    labels = np.concatenate([[0], keys]).astype(np.uint8)
    return labels[scores.argmax(dim=0).cpu().numpy()]


def refine_image(net: EdgeNet, image: np.ndarray, cam_s4: np.ndarray, keys: np.ndarray, config) -> np.ndarray:
    """One image's pseudo mask from its stride-4 CAMs."""
    height, width = image.shape[:2]
    if len(keys) == 0:
        return np.zeros((height, width), np.uint8)
    device = next(net.parameters()).device
    with torch.inference_mode():
        boundary = net.boundary(imagenet_normalize(images_to_tensor01([image], device))[0])  # (h4, w4)
        scores = torch.from_numpy(cam_s4).to(device)  # (n, h4, w4)
        boundary = boundary[: scores.shape[1], : scores.shape[2]]
        walked = random_walk(scores, boundary, config.beta, config.exp_times, config.radius)
        return walk_labels(walked, keys, (height, width), config.bg_threshold)


def run(ctx: StageContext) -> None:
    seed_everything(ctx.config.seed)
    device = pick_device(ctx.config.device)
    checkpoint = ctx.checkpoint("train_irn")
    net, _ = load_edge_net(checkpoint, device)
    with atomic_dir(ctx.stage_dir()) as out:
        written = 0
        for record, image in ctx.each_image():
            cams = ctx.layout.read_cams(record.id)
            save_mask_png(
                refine_image(net, image, cams.cam_s4, cams.keys, ctx.config.refine), out / mask_name(record.id)
            )
            written += 1
        write_stage_record(
            out,
            ctx,
            images=written,
            checkpoints={f"train_irn/{CHECKPOINT}": sha256_file(checkpoint)},
            device=str(device),
        )
