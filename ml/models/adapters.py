"""Feature adaptors on top of frozen CLIP features (POLE eq. 7-8), one for images and one for text.

A(v) = ReLU(ReLU(v W1) W2), W1: D -> D/4, W2: D/4 -> D, no bias;
v* = r * A(v) + (1 - r) * v, then L2-normalised.
Modes: "learnable" (r a learnable D-vector, initialised to `ratio`), "fixed" (r the constant scalar
`ratio`, the paper's ablation; W1 and W2 still learn), "none" (v* = v, only normalised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ml.spec.config import ADAPTORS


class Adaptor(nn.Module):
    def __init__(self, dim: int, mode: str = "learnable", ratio: float = 0.2):
        super().__init__()
        if mode not in ADAPTORS:
            raise ValueError(f"adaptor mode {mode!r}; choose one of {', '.join(ADAPTORS)}")
        self.args = {"dim": dim, "mode": mode, "ratio": ratio}
        self.mode = mode
        if mode == "none":
            return
        self.down = nn.Linear(dim, dim // 4, bias=False)
        self.up = nn.Linear(dim // 4, dim, bias=False)
        if mode == "learnable":
            self.ratio = nn.Parameter(torch.full((dim,), ratio))
        else:
            self.register_buffer("ratio", torch.tensor(ratio))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, D), unit length."""
        if self.mode != "none":
            adapted = F.relu(self.up(F.relu(self.down(v))))
            v = self.ratio * adapted + (1 - self.ratio) * v
        return F.normalize(v, dim=-1)
