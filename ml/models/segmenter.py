"""The segmentation network trained on the pseudo masks (train_seg), and the file people take away.

A torchvision segmentation model whose backbone starts from classification weights through the
one weight resolver (ml.weights): never torchvision's COCO-with-VOC-labels segmentation weights,
which have seen the pixel labels a weakly supervised method must not use.

The checkpoint is self-describing and loads with torch and torchvision alone:

    checkpoint = torch.load(path, weights_only=True)  # <run>/train_seg/model.pt
    model = getattr(torchvision.models.segmentation, checkpoint["arch"])(
        weights=None, weights_backbone=None, num_classes=checkpoint["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    logits = model(normalised_batch)["out"]  # (B, num_classes, H, W); mean/std in checkpoint["input"]

Its keys: format, arch, backbone, num_classes, classes (readable words, label i is classes[i - 1]),
label_names (the dataset's own spellings), palette ([r, g, b] of labels 0..K and of 255), input
(mean, std, the pixel range and channel order), config (the job's resolved config), weights (the
backbone's source and sha256), state_dict. Only plain types and tensors, so weights_only loading works.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from ml.models.backbone import IMAGENET_MEAN, IMAGENET_STD
from ml.runtime import sha256_file
from ml.spec.registry import SEGMENTER_BACKBONES
from ml.weights import ResolvedWeights, resolve_backbone

FORMAT = "pole-segmenter/1"


def build_segmenter(arch: str, num_classes: int, weights: str) -> tuple[nn.Module, ResolvedWeights]:
    """A segmentation network with `num_classes` outputs (background included) whose backbone holds
    `weights` ("random", "imagenet" or a file, see ml.weights.resolve_backbone)."""
    if arch not in SEGMENTER_BACKBONES:
        raise ValueError(f"models.seg_arch={arch!r} is not one of {', '.join(SEGMENTER_BACKBONES)}")
    backbone_name = SEGMENTER_BACKBONES[arch]
    resolved = resolve_backbone(backbone_name, weights)
    model = getattr(torchvision.models.segmentation, arch)(weights=None, weights_backbone=None, num_classes=num_classes)
    if resolved.path is not None:
        classifier = torchvision.models.get_model(backbone_name, weights=None)
        classifier.load_state_dict(torch.load(resolved.path, map_location="cpu", weights_only=True))
        # torchvision wraps a MobileNet's `features` and a ResNet's layers as the backbone, under the same names.
        source = classifier.features if hasattr(classifier, "features") else classifier
        state = {k: v for k, v in source.state_dict().items() if k in model.backbone.state_dict()}
        model.backbone.load_state_dict(state, strict=True)
    return model, resolved


def save_segmenter(
    path: Path,
    model: nn.Module,
    arch: str,
    classes: Sequence[str],
    label_names: Sequence[str],
    palette: np.ndarray,
    config: dict,
    weights: ResolvedWeights,
) -> str:
    """Write the self-describing checkpoint (see the module docstring); returns its sha256."""
    labels = [*range(len(classes) + 1), 255]
    torch.save(
        {
            "format": FORMAT,
            "arch": arch,
            "backbone": SEGMENTER_BACKBONES[arch],
            "num_classes": len(classes) + 1,
            "classes": list(classes),
            "label_names": list(label_names),
            "palette": [[int(v) for v in palette[label]] for label in labels],
            "input": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "range": "RGB in [0, 1]"},
            "config": config,
            "weights": weights.record(),
            "state_dict": model.state_dict(),
        },
        path,
    )
    return sha256_file(path)


def load_segmenter(path: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network from its checkpoint alone; returns (model in eval mode, checkpoint)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pole segmenter checkpoint")
    model = getattr(torchvision.models.segmentation, checkpoint["arch"])(
        weights=None, weights_backbone=None, num_classes=checkpoint["num_classes"]
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval(), checkpoint


def normalise(batch01: torch.Tensor, checkpoint: dict) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> the network's input, with the checkpoint's own mean and std."""
    mean = torch.tensor(checkpoint["input"]["mean"], device=batch01.device).view(1, 3, 1, 1)
    std = torch.tensor(checkpoint["input"]["std"], device=batch01.device).view(1, 3, 1, 1)
    return (batch01 - mean) / std


@torch.inference_mode()
def predict_masks(model: nn.Module, checkpoint: dict, images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB images -> (H, W) uint8 label maps; images of one size run as one batch."""
    device = next(model.parameters()).device
    masks: list[np.ndarray | None] = [None] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(image.shape, []).append(index)
    for indices in by_size.values():
        batch = torch.from_numpy(np.stack([images[i] for i in indices])).to(device)
        batch01 = batch.permute(0, 3, 1, 2).float() / 255.0
        labels = model(normalise(batch01, checkpoint))["out"].argmax(1).to(torch.uint8).cpu().numpy()
        for i, mask in zip(indices, labels, strict=True):
            masks[i] = mask
    return masks
