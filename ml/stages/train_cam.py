"""Stage 1: the baseline CAM classifier (GAP + bias-free 1x1 conv, multilabel soft-margin loss).

Writes train_cam/model.pt (CamNet checkpoint), log.json (loss per step) and stage.json.
"""

from __future__ import annotations

import logging
import math

import torch

from ml.device import pick_device, seed_everything
from ml.loaders import TrainImages, train_loader
from ml.losses import classification_loss
from ml.models.backbone import imagenet_normalize
from ml.models.cam_net import CamNet, save_cam_net
from ml.runtime import StageContext, atomic_dir, write_json, write_stage_record
from ml.spec.config import TrainCamConfig, config_to_dict
from ml.spec.layout import CHECKPOINT, TRAINING_LOG
from ml.training import autocast, check_finite, poly_sgd, training_images, usable_batch

log = logging.getLogger("pole")


def cam_optimizer(net: CamNet, section: TrainCamConfig, total_steps: int):
    """Poly SGD: backbone at lr, the new classifier at lr * classifier_lr_mult."""
    backbone, classifier = net.param_groups()
    groups = [
        {"params": backbone, "lr": section.lr},
        {"params": classifier, "lr": section.lr * section.classifier_lr_mult},
    ]
    return poly_sgd(groups, section.optim, total_steps)


def batch_loss(net: CamNet, x01: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """x01: (B, 3, C, C) crops in [0, 1]; labels: (B, K) multi-hot -> the multilabel soft-margin loss."""
    with autocast(x01.device):
        logits = net(imagenet_normalize(x01))  # (B, K)
    return classification_loss(logits.float(), labels)


def run(ctx: StageContext) -> None:
    if ctx.layout.stage_done(ctx.stage):
        return
    config, section = ctx.config, ctx.config.train_cam
    device = pick_device(config.device)
    generator = seed_everything(config.seed)
    images = training_images(ctx)
    net = CamNet(config.models.cam_backbone, ctx.dataset.num_classes, config.models.cam_weights).to(device)
    if net.backbone.weights.source == "random":
        log.warning("train_cam: %s starts from random weights (models.cam_weights)", config.models.cam_backbone)
    total_steps = section.epochs * math.ceil(len(images) / section.batch_size)
    optimizer, schedule = cam_optimizer(net, section, total_steps)
    data = TrainImages(images, ctx.dataset.num_classes, section.augment, seed=config.seed)
    loader = train_loader(data, section.batch_size, generator, config.num_workers)
    step, steps = 0, []
    net.train()
    for epoch in range(section.epochs):
        data.epoch = epoch
        for batch in loader:
            usable = usable_batch(ctx, batch, device)
            if usable is not None:
                loss = batch_loss(net, usable["image"], usable["label"])
                check_finite(loss, ctx.stage, epoch, step, "lower train_cam.lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps.append({"epoch": epoch, "loss": float(loss.detach()), "lr": schedule.get_last_lr()[0]})
            schedule.step()
            step += 1
            loss_text = f" loss {steps[-1]['loss']:.4f}" if steps else ""
            ctx.progress(step / total_steps, f"epoch {epoch + 1}/{section.epochs}{loss_text}")
    with atomic_dir(ctx.stage_dir()) as scratch:
        checkpoint = save_cam_net(scratch / CHECKPOINT, net, config_to_dict(config))
        write_json(scratch / TRAINING_LOG, {"steps": steps})
        write_stage_record(
            scratch,
            ctx,
            weights={"cam_backbone": net.backbone.weights.record()},
            checkpoints={CHECKPOINT: checkpoint},
            images=len(images) - sum(im.id in ctx.failed_images for im in images),
        )
