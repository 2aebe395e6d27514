"""A frozen open_clip model: images in [0, 1] and prompts in, feature vectors out.

CLIP is never trained here, but gradients flow *through* it: to the CAM maps that mask the images
(train_pole) and to the learnable prompt embeddings (coop / defo / target).

Images arrive un-normalised in [0, 1] and are resized to the model's input size and normalised
with the model's own mean/std (OpenAI's statistics for the OpenAI weights). The public CLIMS/POLE
training code hands CLIP's encoder ImageNet-normalised pixels as they are; we do not.

What CLIP sees of a CAM-masked image (`masked_for_clip`, the `clip_fill` settings). With x the image
in [0, 1], P the map in [0, 1], m and s ImageNet's mean and std, c and d CLIP's (per channel):
- "mean", as the public train_pole code: it masks the ImageNet-normalised image, P * (x - m) / s,
  where a masked-out pixel is 0, ImageNet's mean grey. Taken back to [0, 1] that image is
  m + P * (x - m), which `masked_for_clip` returns; CLIP's encoder then receives
  (m + P * (x - m) - c) / d, for P = 0 exactly (m - c) / d: the mean grey m, encoded the way CLIP
  encodes any pixel. (The public code's encoder receives 0 there, which CLIP reads as its own mean
  grey c, within 0.004 of m; that its other pixels are scaled by 1/s instead of 1/d is the
  normalisation difference above.) train_pole also fills the crop's padding with m: the public code
  pads the normalised image with 0.
- "black": P * x, whose masked-out pixels reach the encoder as -c / d, black.
"""

from __future__ import annotations

import logging

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from ml.models.backbone import IMAGENET_MEAN
from ml.weights import ResolvedWeights, resolve_clip

log = logging.getLogger("pole")

TEXT_BATCH = 256  # prompts per text-encoder forward when filling the cache


class FrozenClip(nn.Module):
    def __init__(self, model_name: str, pretrained: str, device: torch.device | str = "cpu"):
        super().__init__()
        self.weights: ResolvedWeights = resolve_clip(model_name, pretrained)
        tag_cfg = {} if self.weights.source == "random" else open_clip.get_pretrained_cfg(model_name, pretrained)
        # A tag's file is loaded by path, so what the tag implies (QuickGELU, mean/std) is passed on explicitly.
        preprocess = {k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg}
        self.model = open_clip.create_model(
            model_name,
            pretrained=str(self.weights.path) if self.weights.path else None,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=preprocess or None,
            device=device,
        )
        if self.weights.source == "random":
            log.warning(
                "CLIP %s is randomly initialised (models.clip_pretrained='random'): its guidance is noise", model_name
            )
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", self.model.visual.image_size)
        self.image_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.register_buffer("mean", torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            self.embed_dim = int(self.model.encode_text(self.tokenize(["a"])).shape[-1])
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def train(self, mode: bool = True):
        return super().train(False)  # always eval: no dropout, fixed normalisation statistics

    def encode_images(self, x01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, D) features (not normalised); differentiable w.r.t. x01."""
        if tuple(x01.shape[-2:]) != self.image_size:
            x01 = F.interpolate(x01, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return self.model.encode_image((x01 - self.mean) / self.std).float()

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts).to(self.device)  # (N, L)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Fixed prompts -> (N, D) features; each distinct prompt goes through the encoder once."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._text_cache))
        for start in range(0, len(missing), TEXT_BATCH):
            chunk = missing[start : start + TEXT_BATCH]
            features = self.model.encode_text(self.tokenize(chunk)).float()  # (n, D)
            self._text_cache.update(zip(chunk, features, strict=True))
        return torch.stack([self._text_cache[p] for p in prompts])

    def token_embeddings(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, L, W) input embeddings, the vectors prompt learners replace."""
        self._require_plain_text_tower()
        with torch.no_grad():
            return self.model.token_embedding(tokens).float()

    def encode_token_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run the text encoder on (N, L, W) custom input embeddings -> (N, D) features.

        `tokens` are the ids the embeddings stand in for; pooling reads the end-of-text position
        from them, so a learnt vector may replace any token except the end-of-text one.
        """
        self._require_plain_text_tower()
        model = self.model
        cast = model.transformer.get_cast_dtype()
        x = embeddings.to(cast) + model.positional_embedding.to(cast)  # (N, L, W)
        x = model.transformer(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if isinstance(model.text_projection, nn.Linear):
            x = model.text_projection(x)
        elif model.text_projection is not None:
            x = x @ model.text_projection
        return x.float()  # (N, D)

    def _require_plain_text_tower(self) -> None:
        if not hasattr(self.model, "token_embedding"):
            raise ValueError(
                f"CLIP {self.weights.name} has a custom text tower; learnable prompts (coop/defo/target) need an "
                "open_clip CLIP with its own token embedding: set train_pole.prompt to manual or pole"
            )


def imagenet_mean_like(x01: torch.Tensor) -> torch.Tensor:
    """ImageNet's mean grey as a (1, 3, 1, 1) tensor of x01's device and dtype."""
    return torch.tensor(IMAGENET_MEAN, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)


def masked_for_clip(x01: torch.Tensor, maps: torch.Tensor, fill: str) -> torch.Tensor:
    """(N, 3, H, W) images in [0, 1] masked by (N, 1, H, W) maps in [0, 1] -> (N, 3, H, W) in [0, 1],
    what `encode_images` takes; `fill` ("mean" or "black") is what remains where a map is 0."""
    if fill == "black":
        return maps * x01
    if fill == "mean":
        mean = imagenet_mean_like(x01)
        return mean + maps * (x01 - mean)
    raise ValueError(f"unknown CLIP fill {fill!r}; choose mean or black")


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (M, D) -> (N, M) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
