"""torchvision ResNets cut into IRNet's five stages, with output stride 16 (strides 2, 2, 2, 1)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import get_model

from ml.weights import ResolvedWeights, resolve_backbone


class ResNetStages(nn.Module):
    """stage1 = stem (stride 4), stage2..5 = layer1..layer4 (strides 4, 8, 16, 16)."""

    def __init__(self, name: str = "resnet50", weights: str = "random"):
        super().__init__()
        self.weights: ResolvedWeights = resolve_backbone(name, weights)
        net = get_model(name, weights=None)
        if self.weights.path is not None:
            state = torch.load(self.weights.path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        # layer4 keeps stride 1 without dilation (output stride 16), as the CAM/IRNet networks do.
        first = net.layer4[0]
        (first.conv2 if hasattr(first, "conv3") else first.conv1).stride = (1, 1)
        first.downsample[0].stride = (1, 1)
        self.stage1 = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stage2, self.stage3, self.stage4, self.stage5 = net.layer1, net.layer2, net.layer3, net.layer4
        self.channels = tuple(self._out_channels(s) for s in self.stages())

    def stages(self) -> list[nn.Module]:
        return [self.stage1, self.stage2, self.stage3, self.stage4, self.stage5]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised image -> the five stage outputs, last (B, C5, H/16, W/16)."""
        feats = []
        for stage in self.stages():
            x = stage(x)
            feats.append(x)
        return feats

    @staticmethod
    def _out_channels(stage: nn.Module) -> int:
        return [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


# ImageNet statistics: every torchvision backbone (and so the CAM network) expects these.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(x01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) or (3, H, W) pixels in [0, 1] -> a backbone's input (the one place this is written)."""
    shape = (3, 1, 1) if x01.dim() == 3 else (1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x01.device, dtype=x01.dtype).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x01.device, dtype=x01.dtype).view(shape)
    return (x01 - mean) / std
