"""make_cams: multi-scale, flipped CAMs of every image's tagged classes (METHOD.md stage 4).

Per image, relu(W^T Z) at every scale and its mirror image are upsampled, summed and divided by
their max, at full resolution and at stride 4 (see ml.spec.layout). Per scale, a batch of
same-sized images and their flips go through the network together (on a CPU in cache-sized
passes, see CPU_PASS_PIXELS); each image's maps are written as soon as they are made, so memory
does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ml.device import pick_device, seed_everything
from ml.health_checks import CamHealth
from ml.loaders import images_to_tensor01
from ml.models.backbone import imagenet_normalize
from ml.models.cam_net import CamNet, load_cam_net
from ml.runtime import StageContext, atomic_dir, sha256_file, write_stage_record
from ml.spec.layout import CHECKPOINT, cams_name, save_cams
from ml.spec.registry import final_cam_stage

NORM_EPS = 1e-5  # each map is divided by (its max + this): an all-zero map stays zero
# On a CPU, batching pays only while a forward pass stays cache-sized: measured on 2 cores with
# ResNet-50 at 500x375, an image and its flip in one pass are 15% faster at scale 0.5 but 20%
# slower at 1.5 and 2.0 than two passes. So CPU passes hold at most this many input pixels (and
# at least one image); a GPU takes every image and flip of a scale in one pass.
CPU_PASS_PIXELS = 400_000


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (in place; inference only).

    Same maps within float rounding, one memory pass fewer per layer: 4% faster on one CPU core.
    Covers the torchvision ResNet pairs: `convN`/`bnN` siblings and Conv2d, BatchNorm2d in a Sequential.
    """
    for child in module.children():
        fold_batchnorm(child)
    children = dict(module.named_children())
    for name, child in children.items():
        twin = children.get(name.replace("conv", "bn", 1)) if name.startswith("conv") else None
        if isinstance(child, nn.Conv2d) and isinstance(twin, nn.BatchNorm2d):
            setattr(module, name, fuse_conv_bn_eval(child, twin))
            setattr(module, name.replace("conv", "bn", 1), nn.Identity())
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
    return module


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def stride4_size(height: int, width: int) -> tuple[int, int]:
    return -(-height // 4), -(-width // 4)


def multiscale_cams(
    net: CamNet,
    images: Sequence[np.ndarray],
    keys: Sequence[Sequence[int]],
    scales: Sequence[float],
    flip: bool,
    half_precision: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Same-sized images and their tagged labels -> per image (cam (n, H, W), cam_s4 (n, h4, w4)), float32.

    Per scale, every image of the batch and (with `flip`) their mirrors go through the network
    together: in one pass on a GPU, in passes of at most CPU_PASS_PIXELS on a CPU.
    """
    device = next(net.parameters()).device
    height, width = images[0].shape[:2]
    full, strided = (height, width), stride4_size(height, width)
    autocast = (
        torch.autocast("cuda", dtype=torch.float16) if half_precision and device.type == "cuda" else nullcontext()
    )
    batch = imagenet_normalize(images_to_tensor01(images, device))  # (B, 3, H, W)
    labels = [torch.as_tensor(k, dtype=torch.long, device=device) - 1 for k in keys]
    sums_full = [torch.zeros(len(k), *full, device=device) for k in keys]
    sums_s4 = [torch.zeros(len(k), *strided, device=device) for k in keys]
    with torch.inference_mode():
        for scale in scales:
            x = batch if scale == 1.0 else F.interpolate(batch, scaled_size(height, width, scale), mode="bilinear")
            if flip:
                x = torch.cat([x, x.flip(-1)])  # (B * 2, 3, h, w)
            per_pass = len(x) if device.type == "cuda" else max(1, CPU_PASS_PIXELS // (x.shape[2] * x.shape[3]))
            with autocast:
                cams = torch.cat([net.cams(part).float() for part in x.split(per_pass)])  # (B or 2B, K, h/16, w/16)
            if flip:
                count = len(images)
                cams = cams[:count] + cams[count:].flip(-1)
            for i, tagged in enumerate(labels):
                maps = cams[i : i + 1, tagged]  # (1, n, h/16, w/16)
                sums_full[i] += F.interpolate(maps, full, mode="bilinear", align_corners=False)[0]
                sums_s4[i] += F.interpolate(maps, strided, mode="bilinear", align_corners=False)[0]
    return [(_normalise(f), _normalise(s)) for f, s in zip(sums_full, sums_s4, strict=True)]


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each class map divided by its own max, so maps of different classes and images compare."""
    return maps / (maps.flatten(1).amax(dim=1).view(-1, 1, 1) + NORM_EPS) if len(maps) else maps


def run(ctx: StageContext) -> None:
    config = ctx.config.make_cams
    seed_everything(ctx.config.seed)
    device = pick_device(ctx.config.device)
    checkpoint = ctx.checkpoint(final_cam_stage(ctx.config))
    net, _ = load_cam_net(checkpoint, device)
    fold_batchnorm(net)
    records = ctx.usable_images()
    health = CamHealth(ctx.dataset.classes)
    with atomic_dir(ctx.stage_dir()) as out:
        done = written = 0
        for start in range(0, len(records), config.batch_images):
            ctx.check_cancel()
            loaded = []
            for record in records[start : start + config.batch_images]:
                image = ctx.read_image(record)
                if image is not None:
                    loaded.append((record, image))
            # Only images of one size stack into a batch; a batch of mixed sizes runs as several.
            by_size: dict[tuple[int, ...], list] = {}
            for record, image in loaded:
                by_size.setdefault(image.shape, []).append((record, image))
            for group in by_size.values():
                maps = multiscale_cams(
                    net,
                    [image for _, image in group],
                    [record.tags for record, _ in group],
                    config.scales,
                    config.flip,
                    config.half_precision,
                )
                for (record, _), (cam, cam_s4) in zip(group, maps, strict=True):
                    save_cams(
                        out / cams_name(record.id), np.asarray(record.tags), cam.cpu().numpy(), cam_s4.cpu().numpy()
                    )
                    flat = cam_s4.flatten(1)
                    health.add(record.tags, flat.amax(1).tolist(), flat.std(1, correction=0).tolist())
                    written += 1
            done += len(records[start : start + config.batch_images])
            ctx.progress(done / max(len(records), 1), f"{done}/{len(records)} images")
        write_stage_record(
            out,
            ctx,
            images=written,
            checkpoints={f"{checkpoint.parent.name}/{CHECKPOINT}": sha256_file(checkpoint)},
            device=str(device),
            cam_health=health.record(),
            warnings=health.warnings(),
        )
