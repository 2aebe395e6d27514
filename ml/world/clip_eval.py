"""Zero-shot figures of a world CLIP on held-out scenes, as recorded in the shipped checkpoint's provenance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ml.world import scenes
from ml.world.clip_training import TokenCache, input_size, normalise
from ml.world.views import (
    CLASS_WORDS,
    CONTEXT_NAMES,
    TEMPLATE,
    VARIANT_WORDS,
    ScenePool,
    cam_like,
    square_boxes,
)


@torch.no_grad()
def encode_texts(model, tokens: TokenCache, words: tuple[str, ...]) -> torch.Tensor:
    return F.normalize(model.encode_text(tokens([TEMPLATE.format(w) for w in words])), dim=-1)


@torch.no_grad()
def encode_pixels(model, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    parts = [model.encode_image(normalise(pixels[i : i + batch], model)) for i in range(0, len(pixels), batch)]
    return F.normalize(torch.cat(parts), dim=-1)


def object_crops(pool: ScenePool, out_size: int, mask: str = "none"):
    """Every object of the pool: a square crop around it, or the whole scene seen through its mask.

    mask: "none" (a crop), "exact" (only the object, background black) or "cam" (the object's mask
    blurred as a stride-16 CAM sees it, so some surroundings show). Returns (pixels (N, 3, s, s),
    class labels (N,), variant indices (N,), scene indices (N,)).
    """
    scene, index = (pool.labels > 0).nonzero(as_tuple=True)
    pixels = pool.images[scene].float() / 255
    if mask == "none":
        box = pool.boxes[scene, index]
        extent = (box[:, 2:] - box[:, :2]).amax(dim=1)
        boxes = square_boxes((box[:, :2] + box[:, 2:]) / 2, extent * 1.3, pool.size)
    else:
        keep = (pool.owner[scene] == (index + 1)[:, None, None].to(torch.uint8))[:, None].float()
        pixels = pixels * (keep if mask == "exact" else cam_like(keep, 16))
        boxes = torch.tensor([0.0, 0.0, pool.size, pool.size]).expand(len(scene), 4)
    rois = torch.cat([torch.arange(len(scene), dtype=torch.float32)[:, None], boxes], dim=1)
    crops = roi_align(pixels, rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return crops, pool.labels[scene, index], pool.variants[scene, index], scene


def context_patches(pool: ScenePool, out_size: int, gen: torch.Generator, per_scene: int = 2):
    """Patches mostly of context (>= 80%), one context per patch; returns (pixels, context index)."""
    pixels, ids = [], []
    side = pool.size // 3
    for n in (pool.context_id >= 0).nonzero().flatten().tolist():
        found = 0
        for _ in range(per_scene * 4):
            x0, y0 = (int(v) for v in torch.randint(0, pool.size - side, (2,), generator=gen))
            if found < per_scene and pool.context[n, y0 : y0 + side, x0 : x0 + side].float().mean() >= 0.8:
                patch = pool.images[n, :, y0 : y0 + side, x0 : x0 + side].float()[None] / 255
                pixels.append(F.interpolate(patch, size=out_size, mode="bilinear", antialias=True, align_corners=False))
                ids.append(int(pool.context_id[n]))
                found += 1
    return torch.cat(pixels).clamp(0, 1), torch.tensor(ids)


def evaluate(model, pool: ScenePool, model_name: str) -> dict:
    """Zero-shot accuracy on held-out scenes with the pipeline's template; cosines for the CBS threshold."""
    tokens = TokenCache(model_name)
    out_size = input_size(model)
    class_text = encode_texts(model, tokens, CLASS_WORDS)
    variant_text = encode_texts(model, tokens, VARIANT_WORDS)
    context_text = encode_texts(model, tokens, CONTEXT_NAMES)
    variant_class = torch.tensor([1 + CLASS_WORDS.index(c.name) for c in scenes.CLASSES for _ in c.variants])
    result: dict = {}
    for name, mask in (("crops", "none"), ("masked", "exact"), ("cam_masked", "cam")):
        pixels, labels, variants, scene = object_crops(pool, out_size, mask)
        features = encode_pixels(model, pixels)
        by_variant = (features @ variant_text.T).argmax(dim=1)
        own_variant = (features * variant_text[variants]).sum(1)
        own_class = (features * class_text[labels - 1]).sum(1)
        # How much a view of the object looks like its scene's context (what CBS penalises).
        context = pool.context_id[scene]
        on_context = context >= 0
        context_cos = (features[on_context] * context_text[context[on_context]]).sum(1)
        result[name] = {
            "objects": len(labels),
            "class_accuracy": _mean((features @ class_text.T).argmax(dim=1) + 1 == labels),
            "variant_accuracy": _mean(by_variant == variants),
            "class_from_variant_accuracy": _mean(variant_class[by_variant] == labels),
            "variant_word_beats_class_word": _mean(own_variant > own_class),
            "cos_own_variant": _mean(own_variant),
            "cos_own_class": _mean(own_class),
            "cos_scene_context": _mean(context_cos),
        }
    pixels, ids = context_patches(pool, out_size, torch.Generator().manual_seed(0))
    features = encode_pixels(model, pixels)
    result["context_patches"] = {
        "patches": len(ids),
        "context_accuracy": _mean((features @ context_text.T).argmax(dim=1) == ids),
        "cos_own_context": _mean((features * context_text[ids]).sum(1)),
    }
    return result


def _mean(values: torch.Tensor) -> float:
    return round(float(values.float().mean()), 4)
