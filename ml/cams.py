"""The CAMs of a trained CAM network at inference: multi-scale, flipped, each map divided by its max.

make_cams writes these maps for every image (METHOD.md stage 4); select_prompts masks images with
them when select_prompts.cam is "multiscale", as the public POLE selection masks with the baseline's
multi-scale CAM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ml.device import FLOAT32, Precision, pick_precision
from ml.loaders import images_to_tensor01
from ml.models.backbone import imagenet_normalize
from ml.models.cam_net import CamNet
from ml.spec.config import PipelineConfig

NORM_EPS = 1e-5  # each map is divided by (its max + this): an all-zero map stays zero
# On a CPU, batching pays only while a forward pass stays cache-sized: measured on 2 cores with
# ResNet-50 at 500x375, an image and its flip in one pass are 15% faster at scale 0.5 but 20%
# slower at 1.5 and 2.0 than two passes. So CPU passes hold at most this many input pixels (and
# at least one image); a GPU takes every image and flip of a scale in one pass.
CPU_PASS_PIXELS = 400_000


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def stride4_size(height: int, width: int) -> tuple[int, int]:
    return -(-height // 4), -(-width // 4)


def cam_precision(config: PipelineConfig, device: torch.device) -> Precision:
    """The precision of make_cams' passes, which select_prompts' multi-scale CAMs share: `precision`, or
    float32 where make_cams.half_precision is off."""
    return pick_precision(config.precision if config.make_cams.half_precision else "float32", device)


def multiscale_cams(
    net: CamNet,
    images: Sequence[np.ndarray],
    keys: Sequence[Sequence[int]],
    scales: Sequence[float],
    flip: bool,
    precision: Precision = FLOAT32,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Same-sized images and their tagged labels -> per image (cam (n, H, W), cam_s4 (n, h4, w4)), float32.

    Per scale, every image of the batch and (with `flip`) their mirrors go through the network
    together: in one pass on a GPU, in passes of at most CPU_PASS_PIXELS on a CPU, autocast to
    `precision`, in channels-last layout (on a CPU faster in float32 and bfloat16, bench/make_cams.py;
    the layout GPU tensor cores take).
    """
    device = next(net.parameters()).device
    height, width = images[0].shape[:2]
    full, strided = (height, width), stride4_size(height, width)
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
            with precision.autocast(device):
                cams = torch.cat(  # (B or 2B, K, h/16, w/16)
                    [net.cams(part.contiguous(memory_format=torch.channels_last)).float() for part in x.split(per_pass)]
                )
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
