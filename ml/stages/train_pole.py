"""Stage 3: train the CAM network under CLIP guidance (the CLIMS objective with POLE's prompts).

The backbone starts from train_cam/model.pt (conv1/bn1's parameters stay frozen; its BatchNorm
uses batch statistics or stays frozen per `batchnorm`); the head gives per-pixel sigmoid maps P
(B, K, h, w). For every (image, tag k) pair of a batch the crop and P_k are resized to CLIP's input
size, the foreground (P_k) and background (1 - P_k) images are masked with `clip_fill` (mean grey
or black where the map is 0, see ml/models/clip_encoder.py) and encoded by the frozen CLIP; text
features come from the chosen prompt strategy; adaptors (if any) map both for OTM and BTM, and for
CBS too with `cbs_features` "adapted" ("raw": CLIP's own features); the loss is
a*OTM + b*BTM + c*CBS + d*REG (ml/losses.py).

Learning rates: backbone backbone_lr; classifier and adaptors head_lr (both are new layers);
learnable prompt parts backbone_lr * prompt_lr_mult. Gradients are clipped to max_grad_norm when it
is set; a loss that is not finite stops the stage.

Writes train_pole/model.pt (a CamNet checkpoint whose extra keys hold the prompt strategy and the
adaptors with their arguments), log.json (each loss term and the gradient norm per step) and
stage.json (with a warning when the maps saturated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ml.device import pick_device, seed_everything
from ml.health_checks import warning
from ml.loaders import TrainImages, train_loader
from ml.losses import PoleLoss, pole_loss
from ml.models.adapters import Adaptor
from ml.models.backbone import imagenet_normalize
from ml.models.cam_net import CamNet, load_cam_net, save_cam_net
from ml.models.clip_encoder import FrozenClip, imagenet_mean_like, masked_for_clip
from ml.models.prompt_learners import build_prompt_strategy
from ml.runtime import StageContext, atomic_dir, sha256_file, write_json, write_stage_record
from ml.spec.config import TrainPoleConfig, config_to_dict
from ml.spec.layout import CHECKPOINT, TRAINING_LOG
from ml.spec.registry import PROMPT_STRATEGIES
from ml.training import autocast, check_finite, poly_sgd, training_images, usable_batch


class PoleObjective(nn.Module):
    """Everything one training step needs: the CAM network, frozen CLIP, prompts and adaptors."""

    def __init__(self, net: CamNet, clip: FrozenClip, prompts: nn.Module, section: TrainPoleConfig):
        super().__init__()
        self.net, self.clip, self.prompts, self.section = net, clip, prompts, section
        self.image_adaptor = Adaptor(clip.embed_dim, section.adaptor, section.adaptor_ratio)
        self.text_adaptor = Adaptor(clip.embed_dim, section.adaptor, section.adaptor_ratio)
        self.background_prompts = [section.template.format(w) for w in section.background_words]

    def forward(
        self,
        x01: torch.Tensor,
        labels: torch.Tensor,
        image_ids: Sequence[str],
        padding: torch.Tensor | None = None,
    ) -> PoleLoss:
        """x01: (B, 3, C, C) crops in [0, 1], padded with 0 where `padding` (B, 1, C, C) is 1 (None:
        no padding); labels: (B, K) multi-hot."""
        device, section = x01.device, self.section
        rows, classes = labels.nonzero(as_tuple=True)  # (P,), (P,): one entry per (image, tag) pair
        with autocast(device):
            maps = self.net.pixel_maps(imagenet_normalize(x01))  # (B, K, h, w)
        size = self.clip.image_size
        maps = maps.float()
        pair_maps = F.interpolate(maps[rows, classes][:, None], size=size, mode="bilinear", align_corners=False)
        if section.clip_fill == "mean" and padding is not None:
            x01 = x01 + padding * imagenet_mean_like(x01)  # the public code pads the normalised image with 0
        crops = F.interpolate(x01, size=size, mode="bilinear", align_corners=False, antialias=True)[rows]
        foreground = masked_for_clip(crops, pair_maps, section.clip_fill)  # (P, 3, *size)
        background = masked_for_clip(crops, 1 - pair_maps, section.clip_fill)
        with autocast(device):
            features = self.clip.encode_images(torch.cat([foreground, background]))  # (2P, D)
        fg, bg = self.image_adaptor(features).chunk(2)  # (P, D) each
        text = self.text_adaptor(self.prompts(self.clip, [image_ids[i] for i in rows.tolist()], classes + 1))
        background_text = self.clip.encode_text(self.background_prompts)  # (M, D)
        if section.cbs_features == "raw":
            cbs_images = F.normalize(features.chunk(2)[0], dim=-1)
            background_text = F.normalize(background_text, dim=-1)
        else:
            cbs_images, background_text = fg, self.text_adaptor(background_text)
        return pole_loss(fg, bg, text, background_text, maps, section.loss, section.cbs_threshold, cbs_images)

    def param_groups(self) -> list[dict]:
        section = self.section
        backbone, classifier = self.net.param_groups()
        adaptors = [*self.image_adaptor.parameters(), *self.text_adaptor.parameters()]
        groups = [
            {"params": backbone, "lr": section.backbone_lr},
            {"params": classifier + adaptors, "lr": section.head_lr},
        ]
        prompt_parameters = list(self.prompts.parameters())
        if prompt_parameters:
            groups.append({"params": prompt_parameters, "lr": section.backbone_lr * section.prompt_lr_mult})
        return groups

    def checkpoint_extras(self) -> dict:
        """What, beside the CamNet, rebuilds the trained prompt strategy and adaptors."""
        return {
            "prompt": {"spec": self.prompts.spec(), "state_dict": self.prompts.state_dict()},
            "adaptors": {
                name: {"args": adaptor.args, "state_dict": adaptor.state_dict()}
                for name, adaptor in (("image", self.image_adaptor), ("text", self.text_adaptor))
            },
            "clip": self.clip.weights.record(),
        }


def build_objective(ctx: StageContext, device: torch.device) -> PoleObjective:
    config, section = ctx.config, ctx.config.train_pole
    net, _ = load_cam_net(ctx.checkpoint("train_cam"), device)
    net.freeze_bn = section.batchnorm == "frozen"
    clip = FrozenClip(config.models.clip_model, config.models.clip_pretrained, device)
    chosen = None
    if PROMPT_STRATEGIES[section.prompt].uses_selected_words:
        if not ctx.layout.selections.is_file():
            raise FileNotFoundError(
                f"{ctx.layout.selections} is missing: prompt strategy {section.prompt!r} needs "
                "the select_prompts stage first"
            )
        chosen = ctx.layout.chosen_words()
    prompts = build_prompt_strategy(
        section.prompt, clip, ctx.dataset.classes, section.template, section.context_length, chosen
    )
    return PoleObjective(net, clip, prompts, section).to(device)


def clip_gradients(objective: PoleObjective, max_norm: float) -> float:
    """The global gradient norm before clipping, scaling the gradients down to max_norm when it is > 0."""
    params = [p for p in objective.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm)


SATURATED_SHARE = 0.25  # of the steps with no gradient at all, past which the run is flagged


def saturation_warning(steps: list[dict]) -> list[dict]:
    """A warning when many steps had no gradient: every map stuck at 0 or 1, training did nothing."""
    dead = sum(step["grad_norm"] == 0 for step in steps)
    if not steps or dead < SATURATED_SHARE * len(steps):
        return []
    message = (
        f"{dead} of {len(steps)} steps had no gradient (the maps saturated); "
        "set train_pole.max_grad_norm or lower the learning rates"
    )
    return [warning("saturated_training", message)]


def run(ctx: StageContext) -> None:
    if ctx.layout.stage_done(ctx.stage):
        return
    config, section = ctx.config, ctx.config.train_pole
    device = pick_device(config.device)
    generator = seed_everything(config.seed)
    images = training_images(ctx)
    objective = build_objective(ctx, device)
    total_steps = section.epochs * math.ceil(len(images) / section.batch_size)
    optimizer, schedule = poly_sgd(objective.param_groups(), section.optim, total_steps)
    data = TrainImages(images, ctx.dataset.num_classes, section.augment, seed=config.seed)
    loader = train_loader(data, section.batch_size, generator, config.num_workers)
    step, steps = 0, []
    objective.train()
    for epoch in range(section.epochs):
        data.epoch = epoch
        for batch in loader:
            usable = usable_batch(ctx, batch, device)
            if usable is not None:
                loss = objective(usable["image"], usable["label"], usable["id"], usable["padding"])
                optimizer.zero_grad(set_to_none=True)
                check_finite(loss.total, ctx.stage, epoch, step, "set train_pole.max_grad_norm or lower its lrs")
                loss.total.backward()
                grad_norm = clip_gradients(objective, section.max_grad_norm)
                optimizer.step()
                steps.append({"epoch": epoch, "lr": schedule.get_last_lr()[0], "grad_norm": grad_norm, **loss.terms()})
            schedule.step()
            step += 1
            loss_text = f" loss {steps[-1]['total']:.4f}" if steps else ""
            ctx.progress(step / total_steps, f"epoch {epoch + 1}/{section.epochs}{loss_text}")
    clip_weights = objective.clip.weights
    with atomic_dir(ctx.stage_dir()) as scratch:
        checkpoint = save_cam_net(
            scratch / CHECKPOINT, objective.net, config_to_dict(config), **objective.checkpoint_extras()
        )
        write_json(scratch / TRAINING_LOG, {"steps": steps})
        notes = saturation_warning(steps)
        if clip_weights.source == "random":
            notes.insert(0, warning("random_clip", "CLIP weights are random: the guidance is noise"))
        write_stage_record(
            scratch,
            ctx,
            weights={"clip": clip_weights.record()},
            inputs={f"train_cam/{CHECKPOINT}": sha256_file(ctx.checkpoint("train_cam"))},
            checkpoints={CHECKPOINT: checkpoint},
            images=len(images) - sum(im.id in ctx.failed_images for im in images),
            warnings=notes,
        )
