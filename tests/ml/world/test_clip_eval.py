"""The shipped world CLIP on held-out scenes."""

from __future__ import annotations

import json

import torch

from ml.models.clip_encoder import FrozenClip, cosine
from ml.weights import SHIPPED_CLIP, resolve_clip
from ml.world import scenes as world
from ml.world.clip_eval import object_crops
from ml.world.views import render_pool


def test_shipped_clip_ranks_the_right_class_first_on_held_out_crops():
    weights = resolve_clip("pole-tiny", "pole-world")
    provenance = json.loads(weights.path.with_suffix(".json").read_text())
    assert weights.path == SHIPPED_CLIP[("pole-tiny", "pole-world")] and weights.sha256 == provenance["sha256"]
    assert weights.path.stat().st_size <= 25 * 2**20
    clip = FrozenClip("pole-tiny", "pole-world")
    # Two scenes of each class alone, from a seed that neither training nor the provenance figures used.
    unseen_seed = max(provenance["data"]["train_scenes"]["seed"], provenance["data"]["eval_scenes"]["seed"]) + 1
    labels = [[label] for label in range(1, len(world.CLASSES) + 1) for _ in range(2)]
    held_out = render_pool(len(labels), unseen_seed, labels=labels)
    crops, truth, _, _ = object_crops(held_out, clip.image_size[0])
    with torch.no_grad():
        scores = cosine(clip.encode_images(crops), clip.encode_text([f"a photo of {c}." for c in world.class_names()]))
    assert (scores.argmax(dim=1) + 1).tolist() == truth.tolist()
