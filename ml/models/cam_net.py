"""The CAM network: a ResNet (output stride 16) and a bias-free 1x1 classifier, three heads.

- `forward`: global average pooling then the classifier -> (B, K) logits (baseline, multilabel
  soft-margin loss);
- `pixel_maps`: sigmoid of the classifier at every pixel -> (B, K, h, w) (POLE/CLIMS training);
- `cams`: relu of the classifier at every pixel -> (B, K, h, w) (inference, make_cams).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ml.checkpoints import load_checkpoint, save_checkpoint
from ml.models.backbone import ResNetStages


class CamNet(nn.Module):
    def __init__(self, backbone: str = "resnet50", num_classes: int = 20, weights: str = "random"):
        super().__init__()
        self.model_args = {"backbone": backbone, "num_classes": num_classes}
        self.backbone = ResNetStages(backbone, weights)
        self.classifier = nn.Conv2d(self.backbone.channels[-1], num_classes, 1, bias=False)
        # train_cam keeps pretrained BatchNorm statistics, as IRNet's fixed BatchNorm does (small WSSS
        # batches would only add noise); a backbone trained from scratch has none worth keeping, so its
        # BN trains as usual. train_pole sets this from train_pole.batchnorm.
        self.freeze_bn = self.backbone.weights.path is not None
        for module in (self.backbone.stage1[0], self.backbone.stage1[1]):  # conv1, bn1
            for p in module.parameters():
                p.requires_grad_(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]  # (B, C, H/16, W/16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(self.features(x), 1)  # (B, C, 1, 1)
        return self.classifier(pooled).flatten(1)  # (B, K)

    def pixel_maps(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.classifier(self.features(x)))  # (B, K, h, w)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.classifier(self.features(x)))  # (B, K, h, w)

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters that train, classifier parameters): they get different lrs."""
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        return backbone, list(self.classifier.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for m in self.backbone.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self


def save_cam_net(path: Path, net: CamNet, config: dict, **extra) -> str:
    """A self-describing checkpoint (model_args + resolved config); returns its sha256."""
    return save_checkpoint(path, "cam_net", net, config, freeze_bn=net.freeze_bn, **extra)


def load_cam_net(path: Path, device: torch.device | str = "cpu") -> tuple[CamNet, dict]:
    """Rebuild a CamNet from its checkpoint alone; returns (net in eval mode, checkpoint dict).

    Inference uses the saved running statistics (eval mode). A stage that trains the network on sets
    `freeze_bn` itself: train_pole from its `batchnorm` setting.
    """
    checkpoint = load_checkpoint(path, "cam_net", "CAM network")
    net = CamNet(**checkpoint["model_args"], weights="random")
    net.load_state_dict(checkpoint["state_dict"])
    return net.to(device).eval(), checkpoint
