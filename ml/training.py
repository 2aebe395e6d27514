"""What the training stages share: which images they train on, the poly-decay SGD, mixed precision,
and the check that stops a run whose training diverged."""

from __future__ import annotations

import contextlib

import torch

from ml.data import ImageRecord
from ml.runtime import StageContext
from ml.spec.config import OptimConfig


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite: what the stage would save could only give meaningless masks."""


def check_finite(loss: torch.Tensor, stage: str, epoch: int, step: int, hint: str) -> None:
    if not torch.isfinite(loss.detach()).all():
        value = float(loss.detach())
        raise TrainingDiverged(f"{stage}: the loss is {value} at epoch {epoch + 1}, step {step + 1}; {hint}")


def training_images(ctx: StageContext) -> list[ImageRecord]:
    """Images of config.train_split ("" = all) that no earlier stage of the run has failed."""
    split = ctx.config.train_split
    images = [im for im in ctx.usable_images() if not split or im.split == split]
    if not images:
        splits = sorted({im.split for im in ctx.dataset.images})
        raise ValueError(
            f"no images to train on: train_split={split!r}, dataset splits: {', '.join(splits) or 'none'}, "
            f"{len(ctx.failed_images)} image(s) failed earlier; set train_split to one of the splits or ''"
        )
    return images


def poly_sgd(
    groups: list[dict], optim: OptimConfig, total_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.LambdaLR]:
    """SGD with momentum optim.momentum and lr * (1 - step / total_steps) ** power.

    train_cam, train_pole and train_irn default to momentum 0, the public CLIMS/IRNet/POLE code's in
    effect: its wrapper puts weight decay in SGD's momentum slot (momentum 1e-4), so a step there is
    lr times the gradient (weight decay included). PUBLIC_CODE_MOMENTUM in ml/spec/config_sections.py
    has the alternatives.
    """
    optimizer = torch.optim.SGD(groups, momentum=optim.momentum, weight_decay=optim.weight_decay)
    total = max(total_steps, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(1 - step / total, 0.0) ** optim.poly_power)
    return optimizer, schedule


def autocast(device: torch.device):
    """bfloat16 autocast on a CUDA device that has it (no loss scaling needed), else nothing."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def usable_batch(ctx: StageContext, batch: dict, device: torch.device) -> dict | None:
    """What every training step starts with: a cancel check, then the batch's readable images with
    their tensors on `device` (lists filtered alike). Unreadable images are dropped from the run and
    listed; None when none is left."""
    ctx.check_cancel()
    keep = batch["ok"]
    for image_id, ok, error in zip(batch["id"], keep.tolist(), batch["error"], strict=True):
        if not ok and image_id not in ctx.failed_images:
            ctx.fail_image(image_id, error)
    if not keep.any():
        return None
    flags = keep.tolist()
    usable = {}
    for key, value in batch.items():
        if key in ("ok", "error"):
            continue
        if isinstance(value, torch.Tensor):
            usable[key] = value[keep].to(device)
        else:
            usable[key] = [v for v, ok in zip(value, flags, strict=True) if ok]
    return usable
