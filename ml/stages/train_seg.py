"""train_seg: a torchvision segmentation network trained on the run's final pseudo masks, as WSSS
papers train DeepLab on theirs to show what the masks are worth (eval_seg scores it).

The images of `train_split`, each with its mask from the final mask stage (crf/ when it ran, else
refine/), cropped alike as the other training stages crop (random long side, flip, crop; the mask
padded with 255). Pixels of 255 add nothing to the loss: it is the mean cross-entropy over the
labelled pixels of the batch. Poly-decay SGD over the whole network.

Writes train_seg/model.pt (ml.models.segmenter's checkpoint, which loads with torch and torchvision
alone), log.json (loss per step) and stage.json (the backbone's weights, the checkpoint's sha256).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ml.data.palette import IGNORE, VOC_PALETTE
from ml.device import pick_device, seed_everything
from ml.loaders import TrainMasks
from ml.models.backbone import imagenet_normalize
from ml.models.segmenter import build_segmenter, save_segmenter
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record
from ml.spec.config import PipelineConfig, config_to_dict
from ml.spec.layout import CHECKPOINT, TRAINING_LOG
from ml.spec.registry import final_masks_stage
from ml.training import autocast, check_finite, poly_sgd, training_images, usable_batch
from ml.weights import ResolvedWeights

log = logging.getLogger("pole")

# torchvision's MobileNetV3 keeps 1% of each batch's statistics in its running ones, tuned for hundreds
# of ImageNet epochs: after a few hundred steps from scratch they still lag behind the weights (on the
# demo's masks, 160 steps: held-out mIoU 12.2% with 1%, 16.8% with 10%). Its ResNets keep 10% already.
BATCHNORM_MOMENTUM = 0.1


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(B, L, H, W) logits and (B, H, W) labels -> the mean cross-entropy over pixels not 255; 0 for a
    batch without any (a plain mean would be NaN and end the training)."""
    total = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE, reduction="sum")
    return total / (masks != IGNORE).sum().clamp(min=1)


def segmenter(config: PipelineConfig, num_labels: int) -> tuple[torch.nn.Module, ResolvedWeights]:
    """models.seg_arch with models.seg_weights in its backbone, its batch norms at BATCHNORM_MOMENTUM."""
    model, weights = build_segmenter(config.models.seg_arch, num_labels, config.models.seg_weights)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = BATCHNORM_MOMENTUM
    if weights.source == "random":
        log.warning("train_seg: %s starts from random weights (models.seg_weights)", config.models.seg_arch)
    return model, weights


def batch_loss(model: torch.nn.Module, x01: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """x01: (B, 3, C, C) crops in [0, 1]; masks: (B, C, C) labels -> the loss."""
    with autocast(x01.device):
        logits = model(imagenet_normalize(x01))["out"]  # (B, L, C, C): torchvision upsamples to the input
    return segmentation_loss(logits, masks)


def run(ctx: StageContext) -> None:
    if ctx.layout.stage_done(ctx.stage):
        return
    config, section = ctx.config, ctx.config.train_seg
    device = pick_device(config.device)
    generator = seed_everything(config.seed)
    images = training_images(ctx)
    if len(images) < 2:
        raise ValueError("train_seg needs 2 training images or more: its batch normalisation needs 2 crops a batch")
    masks = final_masks_stage(config)
    model, weights = segmenter(config, ctx.dataset.num_classes + 1)
    model = model.to(device)
    crops = TrainMasks(images, ctx.stage_dir(masks), section.augment, seed=config.seed)
    # Full batches only: DeepLab pools each crop to one pixel and normalises that over the batch.
    loader = torch.utils.data.DataLoader(
        crops,
        batch_size=min(section.batch_size, len(images)),
        shuffle=True,
        generator=generator,
        num_workers=config.num_workers,
        drop_last=True,
    )
    total_steps = section.epochs * len(loader)
    optimizer, schedule = poly_sgd([{"params": model.parameters(), "lr": section.lr}], section.optim, total_steps)
    step, steps = 0, []
    model.train()
    for epoch in range(section.epochs):
        crops.epoch = epoch
        for batch in loader:
            usable = usable_batch(ctx, batch, device)
            if usable is not None:
                loss = batch_loss(model, usable["image"], usable["mask"])
                check_finite(loss, ctx.stage, epoch, step, "lower train_seg.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps.append({"epoch": epoch, "loss": float(loss.detach()), "lr": schedule.get_last_lr()[0]})
            schedule.step()
            step += 1
            loss_text = f" loss {steps[-1]['loss']:.4f}" if steps else ""
            ctx.progress(step / total_steps, f"epoch {epoch + 1}/{section.epochs}{loss_text}")
    dataset = ctx.dataset
    with atomic_dir(ctx.stage_dir()) as scratch:
        checkpoint = save_segmenter(
            scratch / CHECKPOINT,
            model,
            config.models.seg_arch,
            dataset.classes,
            dataset.label_names,
            VOC_PALETTE,
            config_to_dict(config),
            weights,
        )
        write_json(scratch / TRAINING_LOG, {"steps": steps})
        write_stage_record(
            scratch,
            ctx,
            weights={"seg_backbone": weights.record()},
            checkpoints={CHECKPOINT: checkpoint},
            images=len(images) - sum(im.id in ctx.failed_images for im in images),
            masks=masks,
            train_split=config.train_split,
            device=str(device),
        )
