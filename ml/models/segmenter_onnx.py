"""The segmenter (ml.models.segmenter) exported to ONNX, for runtimes without torch (onnxruntime and the like).

The graph takes `image`, (N, 3, H, W) float32: RGB in [0, 1] minus the checkpoint's mean, divided by
its std; and gives `logits`, (N, K + 1, H, W), whose argmax over axis 1 is the label map (0 is
background, k is classes[k - 1]). N, H and W are free. The file's metadata_props hold what the
checkpoint says about the network: classes, label_names, palette and input (mean, std, pixel range) as
JSON, arch, and checkpoint_sha256, the checkpoint it was exported from.

An export is kept only when onnxruntime reproduces PyTorch on random images of two sizes, neither of
them the size it was traced at (`check_export`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from torch import nn

from ml.models.segmenter import load_segmenter, normalise
from ml.runtime import sha256_file

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
# A batch of 2: the exporter fixes a traced batch of 1 as a constant instead of leaving it free.
TRACE_SHAPE = (2, 3, 64, 80)
CHECK_SHAPES = ((2, 3, 97, 131), (2, 3, 120, 160))
# onnxruntime's logits differ from PyTorch's by at most this fraction of the largest logit (at least 1).
# Measured on CPU, onnxruntime 1.32 against torch 2.14.1, for the four architectures with largest
# logits from 0.2 to 420,000: at most 1.1e-6 of the largest logit; the margin is for other CPUs' kernels.
LOGIT_TOLERANCE = 1e-4
# Pixels whose top two logits are closer than the tolerance may swap labels, so a few may differ.
MIN_LABEL_AGREEMENT = 0.999


@dataclass(frozen=True)
class ExportCheck:
    max_difference: float  # the largest |onnxruntime - PyTorch| over every logit compared
    tolerance: float  # what it may be for these logits
    label_agreement: float  # share of pixels whose argmax labels are the same

    @property
    def passed(self) -> bool:
        return self.max_difference <= self.tolerance and self.label_agreement >= MIN_LABEL_AGREEMENT

    def __str__(self) -> str:
        return (
            f"logits differ by up to {self.max_difference:.3g} (allowed {self.tolerance:.3g}), "
            f"{self.label_agreement:.4%} of pixels get the same label (at least {MIN_LABEL_AGREEMENT:.1%} needed)"
        )


class _Logits(nn.Module):
    """torchvision's segmentation networks answer a dict; the exported graph answers the logits alone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)["out"]


def export_onnx(checkpoint_path: Path, onnx_path: Path) -> ExportCheck:
    """Write the checkpoint's network to `onnx_path` as ONNX, once onnxruntime is found to reproduce it
    (ValueError otherwise); returns what the check measured."""
    model, checkpoint = load_segmenter(checkpoint_path)
    network = _Logits(model).eval()
    free_axes = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
    program = torch.onnx.export(
        network,
        (torch.zeros(TRACE_SHAPE),),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=(free_axes,),
        verbose=False,
    )
    program.model.metadata_props.update(onnx_metadata(checkpoint, sha256_file(checkpoint_path)))
    scratch = onnx_path.with_name(onnx_path.name + ".tmp")
    try:
        program.save(scratch, external_data=False)
        check = check_export(network, checkpoint, scratch)
        if not check.passed:
            raise ValueError(f"onnxruntime does not reproduce the PyTorch network: {check}")
        scratch.replace(onnx_path)
    finally:
        scratch.unlink(missing_ok=True)
    return check


def onnx_metadata(checkpoint: dict, checkpoint_sha256: str) -> dict[str, str]:
    described = {key: json.dumps(checkpoint[key]) for key in ("classes", "label_names", "palette", "input")}
    return {**described, "arch": checkpoint["arch"], "checkpoint_sha256": checkpoint_sha256}


@torch.inference_mode()
def check_export(network: nn.Module, checkpoint: dict, onnx_path: Path) -> ExportCheck:
    """Run random images of CHECK_SHAPES through the exported graph and through `network`, and compare."""
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    reference, exported = [], []
    for shape in CHECK_SHAPES:
        image = normalise(torch.rand(shape, generator=generator), checkpoint)
        reference.append(network(image).numpy())
        exported.append(session.run([OUTPUT_NAME], {INPUT_NAME: image.numpy()})[0])
    return compare_logits(reference, exported)


def compare_logits(reference: list[np.ndarray], exported: list[np.ndarray]) -> ExportCheck:
    """Agreement of two lists of (N, K + 1, H, W) logits, pairwise of the same shapes."""
    pairs = list(zip(reference, exported, strict=True))
    largest = max(1.0, *(float(np.abs(logits).max()) for logits in reference))
    difference = max(float(np.abs(ours - theirs).max()) for ours, theirs in pairs)
    same = sum(int((ours.argmax(1) == theirs.argmax(1)).sum()) for ours, theirs in pairs)
    pixels = sum(logits[:, 0].size for logits in reference)
    return ExportCheck(difference, LOGIT_TOLERANCE * largest, same / pixels)
