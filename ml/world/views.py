"""What the tiny CLIP is trained on: world scenes seen through crops and CAM-like masks, and words for them.

What the views are for: POLE shows CLIP an image multiplied by a coarse CAM (background black),
the same image with the CAM cut out, and asks how much a foreground looks like "a photo of water.".
So besides object crops and whole scenes, CLIP sees scenes masked by blurry, partial object masks
and their complements, and context crops. A caption fits a view to the degree its words are seen in
it: each object's share still visible through the mask and the crop, and the share of the visible
image that is context (water showing around a blurry boat mask makes "water" fit, a little).

Captions name an object by its variant word (weight 1) or its class word (weight 1/2): the class
word fits both looks of a class and ends up between them, so the variant word is the better
match for an object, as POLE expects of real CLIP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ml.world import scenes

TEMPLATE = "a photo of {}."  # the pipeline's template (select_prompts / train_pole)
EXTRA_TEMPLATES = ("a photo of a {}.", "a {}.", "an image of {}.", "{}")
PAIR_TEMPLATES = ("a {} on {}.", "a photo of a {} on {}.")  # object word, context word
CLASS_WORD_WEIGHT = 0.6
CONTEXT_WEIGHT = 0.5  # shared by a context's words, so that four words for water do not outweigh one boat
VIEW_KINDS = ("crop", "scene", "fg", "bg", "patch")
VIEW_PROBS = (0.3, 0.15, 0.3, 0.15, 0.1)
MAX_OBJECTS = max(n for n, _ in scenes.OBJECT_COUNTS)


@dataclass
class ScenePool:
    """Rendered scenes as tensors; objects are recovered from the owner map."""

    images: torch.Tensor  # (N, 3, S, S) uint8
    owner: torch.Tensor  # (N, S, S) uint8: 0 none, o + 1 = object o of the scene
    context: torch.Tensor  # (N, S, S) bool, visible context pixels
    context_id: torch.Tensor  # (N,) long, index into CONTEXT_NAMES or -1
    labels: torch.Tensor  # (N, O) long, class label of object o (0 = no object)
    variants: torch.Tensor  # (N, O) long, index into VARIANT_WORDS (-1 = no object)
    boxes: torch.Tensor  # (N, O, 4) float x0, y0, x1, y1

    @property
    def size(self) -> int:
        return self.images.shape[-1]


CLASS_WORDS = tuple(c.name for c in scenes.CLASSES)
VARIANT_WORDS = tuple(v for c in scenes.CLASSES for v in c.variants)
CONTEXT_NAMES = tuple(scenes.CONTEXTS)
VOCABULARY = CLASS_WORDS + VARIANT_WORDS + tuple(w for words in scenes.CONTEXTS.values() for w in words)


def render_pool(count: int, seed: int, size: int = 128, labels: list[list[int]] | None = None) -> ScenePool:
    """`count` world scenes of a seed; `labels` (one list per scene) fixes which objects each holds."""
    images = np.zeros((count, size, size, 3), np.uint8)
    owner = np.zeros((count, size, size), np.uint8)
    context = np.zeros((count, size, size), bool)
    context_id = np.full(count, -1)
    object_labels = np.zeros((count, MAX_OBJECTS), np.int64)
    variants = np.full((count, MAX_OBJECTS), -1)
    boxes = np.zeros((count, MAX_OBJECTS, 4), np.float32)
    for n in range(count):
        scene = scenes.render_scene(scenes.scene_rng(seed, n), size, labels[n] if labels else None)
        images[n], context[n] = scene.image, scene.context_mask
        context_id[n] = CONTEXT_NAMES.index(scene.context) if scene.context else -1
        for o, obj in enumerate(scene.objects):
            owner[n][obj.mask] = o + 1
            object_labels[n, o], variants[n, o] = obj.label, VARIANT_WORDS.index(obj.variant)
            boxes[n, o] = obj.box
    return ScenePool(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(owner),
        torch.from_numpy(context),
        torch.from_numpy(context_id),
        torch.from_numpy(object_labels),
        torch.from_numpy(variants),
        torch.from_numpy(boxes),
    )


# --- views ---------------------------------------------------------------------------------------


@dataclass
class Views:
    pixels: torch.Tensor  # (B, 3, s, s) in [0, 1], masked and cropped, before normalisation
    weights: torch.Tensor  # (B, V): how well each VOCABULARY word describes each view


def _visible_fraction(x: torch.Tensor) -> torch.Tensor:
    """How a word's weight grows with the share of an object seen: none below 1/4, full from 3/5."""
    return ((x - 0.25) / 0.35).clamp(0.0, 1.0)


def cam_like(objects: torch.Tensor, stride: int) -> torch.Tensor:
    """(B, 1, S, S) object masks as a CAM of that stride sees them: block averages, upsampled, max 1."""
    s = objects.shape[-1]
    coarse = F.avg_pool2d(objects, stride)  # (B, 1, S/stride, S/stride)
    up = F.interpolate(coarse, size=(s, s), mode="bilinear", align_corners=False)
    return up / up.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def _soft_masks(objects: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """CAM-like masks of (B, 1, S, S) objects: exact, or blurred at stride 8-16, often cut by a line."""
    b, _, s, _ = objects.shape
    blurred = [cam_like(objects, 8), cam_like(objects, 16)]
    pick = torch.randint(0, 4, (b, 1, 1, 1), generator=gen)  # 0 exact, 1 stride 8, 2-3 stride 16
    masks = torch.where(pick == 0, objects, torch.where(pick == 1, blurred[0], blurred[1]))
    gamma = torch.empty(b, 1, 1, 1).uniform_(0.5, 2.0, generator=gen)
    gain = torch.empty(b, 1, 1, 1).uniform_(0.5, 1.6, generator=gen)  # below 1: dim all over, as an unsure CAM
    masks = (masks.clamp_min(0) ** gamma * gain).clamp(0, 1)
    # A partial mask: everything past a random line near the object's centre is lost.
    yy, xx = torch.meshgrid(torch.arange(s, dtype=torch.float32), torch.arange(s, dtype=torch.float32), indexing="ij")
    area = objects.sum(dim=(2, 3)).clamp_min(1)  # (B, 1)
    cy = (objects[:, 0] * yy).sum(dim=(1, 2)) / area[:, 0]
    cx = (objects[:, 0] * xx).sum(dim=(1, 2)) / area[:, 0]
    angle = torch.rand(b, generator=gen) * 2 * math.pi
    offset = (torch.rand(b, generator=gen) * 0.8 - 0.2) * area[:, 0].sqrt()
    side = (xx[None] - cx[:, None, None]) * angle.cos()[:, None, None] + (yy[None] - cy[:, None, None]) * angle.sin()[
        :, None, None
    ]
    cut = (side < offset[:, None, None]).float()[:, None]  # (B, 1, S, S)
    partial = torch.rand(b, 1, 1, 1, generator=gen) < 0.3
    return torch.where(partial, masks * cut, masks)


def square_boxes(centre: torch.Tensor, side: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 2) centres and (B,) sides -> (B, 4) boxes shifted to lie inside the image where they fit."""
    side = side.clamp(8, size)
    x0 = (centre[:, 0] - side / 2).clamp(0, None)
    y0 = (centre[:, 1] - side / 2).clamp(0, None)
    x0 = torch.minimum(x0, size - side)
    y0 = torch.minimum(y0, size - side)
    return torch.stack([x0, y0, x0 + side, y0 + side], dim=1)


def sample_views(pool: ScenePool, batch: int, out_size: int, gen: torch.Generator) -> Views:
    s = pool.size
    scene = torch.randint(0, len(pool.images), (batch,), generator=gen)
    kind = torch.multinomial(torch.tensor(VIEW_PROBS), batch, replacement=True, generator=gen)
    count = (pool.labels[scene] > 0).sum(dim=1)  # (B,)
    chosen = (torch.rand(batch, generator=gen) * count).long()  # the view's object
    owner = pool.owner[scene].long()  # (B, S, S)
    objects = F.one_hot(owner, MAX_OBJECTS + 1)[..., 1:].permute(0, 3, 1, 2).float()  # (B, O, S, S)
    target = objects[torch.arange(batch), chosen][:, None]  # (B, 1, S, S)

    soft = _soft_masks(target, gen)
    mask = torch.ones_like(target)
    is_fg, is_bg = (kind == VIEW_KINDS.index("fg")), (kind == VIEW_KINDS.index("bg"))
    mask = torch.where(is_fg[:, None, None, None], soft, mask)
    mask = torch.where(is_bg[:, None, None, None], 1 - soft, mask)

    # Crops: around the object (crop; half the fg views), the whole scene or most of it, or a patch.
    box = pool.boxes[scene, chosen]  # (B, 4)
    centre = (box[:, :2] + box[:, 2:]) / 2
    extent = (box[:, 2:] - box[:, :2]).amax(dim=1)
    jitter = (torch.rand(batch, 2, generator=gen) - 0.5) * 0.7 * extent[:, None]
    around = square_boxes(centre + jitter, extent * (1.1 + 1.1 * torch.rand(batch, generator=gen)), s)
    most = square_boxes(torch.rand(batch, 2, generator=gen) * s, s * (0.6 + 0.4 * torch.rand(batch, generator=gen)), s)
    patch = square_boxes(
        torch.rand(batch, 2, generator=gen) * s, s * (0.2 + 0.35 * torch.rand(batch, generator=gen)), s
    )
    whole = torch.tensor([0.0, 0.0, s, s]).expand(batch, 4)
    use_around = (kind == VIEW_KINDS.index("crop")) | (is_fg & (torch.rand(batch, generator=gen) < 0.4))
    use_most = (kind == VIEW_KINDS.index("scene")) & (torch.rand(batch, generator=gen) < 0.5)
    boxes = torch.where(use_around[:, None], around, whole)
    boxes = torch.where(use_most[:, None], most, boxes)
    boxes = torch.where((kind == VIEW_KINDS.index("patch"))[:, None], patch, boxes)

    grid = torch.arange(s, dtype=torch.float32) + 0.5
    in_x = (grid[None] >= boxes[:, 0:1]) & (grid[None] < boxes[:, 2:3])  # (B, S)
    in_y = (grid[None] >= boxes[:, 1:2]) & (grid[None] < boxes[:, 3:4])
    seen = mask * (in_y[:, None, :, None] & in_x[:, None, None, :]).float()  # (B, 1, S, S)

    object_share = (seen * objects).sum(dim=(2, 3)) / objects.sum(dim=(2, 3)).clamp_min(1)  # (B, O)
    context = pool.context[scene][:, None].float()
    context_share = (seen * context).sum(dim=(1, 2, 3)) / seen.sum(dim=(1, 2, 3)).clamp_min(1)  # (B,)
    weights = _word_weights(
        pool.labels[scene],
        pool.variants[scene],
        _visible_fraction(object_share),
        pool.context_id[scene],
        ((context_share - 0.08) / 0.2).clamp(0, 1),
    )

    pixels = pool.images[scene].float() / 255 * mask
    rois = torch.cat([torch.arange(batch, dtype=torch.float32)[:, None], boxes], dim=1)
    crops = roi_align(pixels, rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
    flip = torch.rand(batch, generator=gen) < 0.5
    crops = torch.where(flip[:, None, None, None], crops.flip(-1), crops)
    return Views(crops.clamp(0, 1), weights)


def _word_weights(labels, variants, seen, context_id, context_weight) -> torch.Tensor:
    """(B, V) word weights from each object's seen weight (B, O) and the context's weight (B,)."""
    batch = labels.shape[0]
    weights = torch.zeros(batch, len(VOCABULARY))
    rows = torch.arange(batch)
    for o in range(labels.shape[1]):
        present = labels[:, o] > 0
        w = torch.where(present, seen[:, o], torch.zeros(batch))
        class_col = (labels[:, o] - 1).clamp_min(0)
        variant_col = len(CLASS_WORDS) + variants[:, o].clamp_min(0)
        weights[rows, class_col] = torch.maximum(weights[rows, class_col], CLASS_WORD_WEIGHT * w)
        weights[rows, variant_col] = torch.maximum(weights[rows, variant_col], w)
    for index, name in enumerate(CONTEXT_NAMES):
        words = scenes.CONTEXTS[name]
        on = (context_id == index).float() * context_weight * CONTEXT_WEIGHT / len(words)
        for word in words:
            weights[:, VOCABULARY.index(word)] = on
    return weights


# --- captions -------------------------------------------------------------------------------------


def captions_for(weights: torch.Tensor, gen: torch.Generator) -> tuple[list[str], torch.Tensor]:
    """Every word in the pipeline's template, plus one varied caption per view.

    Returns the unique captions and how well each fits each view, (B, C): a caption's fit is its
    weakest word's weight.
    """
    captions: dict[str, tuple[int, ...]] = {TEMPLATE.format(w): (i,) for i, w in enumerate(VOCABULARY)}
    context_cols = [VOCABULARY.index(w) for words in scenes.CONTEXTS.values() for w in words]
    for row in weights:
        if row.sum() <= 0:
            continue
        word = int(torch.multinomial(row, 1, generator=gen))
        objects = row.clone()
        objects[context_cols] = 0
        if word not in context_cols and row[context_cols].sum() > 0 and torch.rand(1, generator=gen) < 0.3:
            place = int(torch.multinomial(row[context_cols], 1, generator=gen))
            template = PAIR_TEMPLATES[int(torch.randint(len(PAIR_TEMPLATES), (1,), generator=gen))]
            captions[template.format(VOCABULARY[word], VOCABULARY[context_cols[place]])] = (word, context_cols[place])
        else:
            template = EXTRA_TEMPLATES[int(torch.randint(len(EXTRA_TEMPLATES), (1,), generator=gen))]
            captions[template.format(VOCABULARY[word])] = (word,)
    fit = torch.stack([weights[:, list(cols)].amin(dim=1) for cols in captions.values()], dim=1)
    return list(captions), fit
