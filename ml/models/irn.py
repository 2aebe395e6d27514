"""IRNet's boundary branch on a frozen ResNet, and the path affinities it defines.

The affinity of two pixels i, j of the stride-4 grid is a_ij = 1 - (the largest boundary
probability on the straight path from i to j). Pairs are taken within a radius, one direction
per pair (the displacements of a half disc), so a map of affinities is (B, D, h, w): entry
[b, d, y, x] is the pair ((y, x), (y, x) + displacement d). Pairs reaching outside the map have
affinity 0 and, at training, an ignored label.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ml.checkpoints import load_checkpoint, save_checkpoint
from ml.models.backbone import ResNetStages

EDGE_CHANNELS = 32  # per backbone stage, before the five are concatenated
SIDE_UPSAMPLING = (1, 1, 2, 4, 4)  # the stages' strides (4, 4, 8, 16, 16) brought to stride 4
EPS = 1e-5


@cache
def displacements(radius: int) -> tuple[tuple[int, int], ...]:
    """(dy, dx) with 0 < dy^2 + dx^2 < radius^2, one of each +-pair: dy > 0, or dy == 0 and dx > 0."""
    reach = radius - 1
    return tuple(
        (dy, dx)
        for dy in range(reach + 1)
        for dx in range(-reach, reach + 1)
        if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius
    )


@cache
def path_offsets(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """Grid points of the segment (0, 0) -> (dy, dx): those within one pixel of the line, ends included."""
    length_sq = dy * dy + dx * dx
    return tuple(
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < length_sq
    )


def path_affinities(boundary: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, h, w) boundary probabilities -> (B, D, h, w) affinities of the pairs within `radius`."""
    reach = radius - 1
    height, width = boundary.shape[-2:]
    # Outside the map the boundary is certain (1), so pairs leaving the map get affinity 0.
    padded = F.pad(boundary, (reach, reach, 0, reach), value=1.0)  # (B, h + reach, w + 2 reach)
    affinities = []
    for dy, dx in displacements(radius):
        strongest = None
        for py, px in path_offsets(dy, dx):
            window = padded[:, py : py + height, reach + px : reach + px + width]
            strongest = window if strongest is None else torch.maximum(strongest, window)
        affinities.append(1.0 - strongest)
    return torch.stack(affinities, dim=1)


def pair_labels(labels: torch.Tensor, radius: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, h, w) seed labels -> boolean (B, D, h, w) masks: background pairs, same-class pairs, cross pairs.

    A pair with a 255 end, or reaching outside the map, is in none of the three.
    """
    reach = radius - 1
    height, width = labels.shape[-2:]
    padded = F.pad(labels, (reach, reach, 0, reach), value=255)
    targets = torch.stack(
        [padded[:, dy : dy + height, reach + dx : reach + dx + width] for dy, dx in displacements(radius)], dim=1
    )  # (B, D, h, w)
    sources = labels.unsqueeze(1)  # (B, 1, h, w)
    known = (sources != 255) & (targets != 255)
    same = known & (sources == targets)
    return same & (sources == 0), same & (sources != 0), known & (sources != targets)


def affinity_loss(affinities: torch.Tensor, labels: torch.Tensor, radius: int) -> tuple[torch.Tensor, dict]:
    """IRNet's three-part loss: ((bg pairs + fg pairs) / 2 pulled to 1, cross pairs pushed to 0) / 2."""
    background, foreground, cross = pair_labels(labels, radius)
    pull = -torch.log(affinities + EPS)
    push = -torch.log(1.0 + EPS - affinities)
    parts = {
        "background": (pull * background).sum() / (background.sum() + EPS),
        "foreground": (pull * foreground).sum() / (foreground.sum() + EPS),
        "cross": (push * cross).sum() / (cross.sum() + EPS),
    }
    loss = ((parts["background"] + parts["foreground"]) / 2 + parts["cross"]) / 2
    return loss, {k: float(v.detach()) for k, v in parts.items()}


class EdgeNet(nn.Module):
    """A frozen ResNet and the trained boundary branch on its five stages (stride 4 output)."""

    def __init__(self, backbone: str = "resnet50", weights: str = "random"):
        super().__init__()
        self.model_args = {"backbone": backbone}
        self.backbone = ResNetStages(backbone, weights)
        self.backbone.requires_grad_(False)
        self.side = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, EDGE_CHANNELS, 1, bias=False),
                nn.GroupNorm(4, EDGE_CHANNELS),
                nn.ReLU(inplace=True),
            )
            for channels in self.backbone.channels
        )
        self.fuse = nn.Conv2d(EDGE_CHANNELS * len(self.side), 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, h, w) boundary logits, h = ceil(H / 4)."""
        with torch.no_grad():
            features = self.backbone(x)
        height, width = features[0].shape[-2:]  # the stem's output is the stride-4 grid
        sides = []
        for side, feature, factor in zip(self.side, features, SIDE_UPSAMPLING, strict=True):
            edge = side(feature)
            if factor > 1:
                edge = F.interpolate(edge, scale_factor=factor, mode="bilinear", align_corners=False)
            sides.append(edge[..., :height, :width])
        return self.fuse(torch.cat(sides, dim=1))[:, 0]

    def boundary(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) normalised image -> (h, w) boundary probability, averaged with its mirror image."""
        logits = self(torch.stack([image, image.flip(-1)]))  # (2, h, w)
        return torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: its BatchNorm statistics never move
        return self


def save_edge_net(path: Path, net: EdgeNet, config: dict, **extra) -> str:
    """A self-describing checkpoint (model_args, full state incl. the frozen backbone, config); returns sha256."""
    return save_checkpoint(path, "edge_net", net, config, **extra)


def load_edge_net(path: Path, device: torch.device | str = "cpu") -> tuple[EdgeNet, dict]:
    """Rebuild an EdgeNet from its checkpoint alone; returns (net in eval mode, checkpoint dict)."""
    checkpoint = load_checkpoint(path, "edge_net", "boundary network")
    net = EdgeNet(**checkpoint["model_args"], weights="random")
    net.load_state_dict(checkpoint["state_dict"])
    return net.to(device).eval(), checkpoint
