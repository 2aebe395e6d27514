"""The CLIP-guided objective of CLIMS/POLE (METHOD.md step 3) and the baseline classification loss.

All similarities are cosines of unit-length features, clamped to [1e-4, 0.9999] before the log so
that no term is infinite. The clamp also stops the gradient of a pair outside that range, as in
the public code.
- OTM (object-text matching): -mean log s(fg, class prompt)
- BTM (background-text mismatching): -mean log(1 - s(bg, class prompt))
- CBS (co-occurring background suppression): -sum over (fg image, background prompt) pairs of
  log(1 - s) * [s > threshold], on the features train_pole.cbs_features names (POLE's public code:
  CLIP's raw features, without adaptors). CLIMS sums this term without normalising (it grows with
  the number of pairs in a batch and its weight of 1 was tuned that way); we keep the sum. CLIMS
  applies no clamp here; we clamp like the other terms so that s = 1 cannot give an infinite loss.
- REG (area regulariser): mean of all the class maps P.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ml.spec.config import LossWeights

SIM_MIN, SIM_MAX = 1e-4, 0.9999


def clamp_similarity(s: torch.Tensor) -> torch.Tensor:
    return s.clamp(SIM_MIN, SIM_MAX)


def pair_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean over (image, tag) pairs; 0 for a batch without any, whose images carry no tags
    (a plain mean would be NaN and end the training)."""
    return values.sum() / max(values.numel(), 1)


def otm_loss(s_fg_text: torch.Tensor) -> torch.Tensor:
    """(P,) similarities of foreground images to their class prompts -> scalar."""
    return pair_mean(-torch.log(clamp_similarity(s_fg_text)))


def btm_loss(s_bg_text: torch.Tensor) -> torch.Tensor:
    """(P,) similarities of background images to their class prompts -> scalar."""
    return pair_mean(-torch.log(1 - clamp_similarity(s_bg_text)))


def cbs_loss(s_fg_background: torch.Tensor, threshold: float = 0.26) -> torch.Tensor:
    """(P, M) similarities of foreground images to M background prompts -> scalar (a sum, see above)."""
    above = (s_fg_background > threshold).to(s_fg_background.dtype)
    return (-torch.log(1 - clamp_similarity(s_fg_background)) * above).sum()


def reg_loss(maps: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) sigmoid class maps -> their mean activation."""
    return maps.mean()


@dataclass
class PoleLoss:
    total: torch.Tensor
    otm: torch.Tensor
    btm: torch.Tensor
    cbs: torch.Tensor
    reg: torch.Tensor

    def terms(self) -> dict[str, float]:
        return {name: float(getattr(self, name).detach()) for name in ("total", "otm", "btm", "cbs", "reg")}


def pole_loss(
    fg: torch.Tensor,
    bg: torch.Tensor,
    text: torch.Tensor,
    background_text: torch.Tensor,
    maps: torch.Tensor,
    weights: LossWeights,
    cbs_threshold: float = 0.26,
    cbs_images: torch.Tensor | None = None,
) -> PoleLoss:
    """fg, bg, text: (P, D) unit features per (image, tag) pair; background_text: (M, D); maps: (B, K, h, w).

    CBS compares `cbs_images`, (P, D) unit features of the foreground images in the space of
    background_text, with background_text; they are fg when None.
    """
    otm = otm_loss((fg * text).sum(-1))
    btm = btm_loss((bg * text).sum(-1))
    cbs = cbs_loss((fg if cbs_images is None else cbs_images) @ background_text.T, cbs_threshold)
    reg = reg_loss(maps)
    total = weights.otm * otm + weights.btm * btm + weights.cbs * cbs + weights.reg * reg
    return PoleLoss(total, otm, btm, cbs, reg)


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Baseline CAM classifier: multilabel soft-margin over (B, K) logits and multi-hot labels."""
    return F.multilabel_soft_margin_loss(logits, labels)
