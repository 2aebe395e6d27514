"""The world's scenes: both looks of every class, occlusion that keeps tags true, contexts that follow classes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from ml.spec.config import resolve_config
from ml.world import scenes as world


@pytest.fixture(scope="module")
def scenes() -> list[world.Scene]:
    return [world.render_scene(world.scene_rng(11, i)) for i in range(300)]


def test_every_class_shows_both_variants_and_objects_vary(scenes):
    variants = Counter(o.variant for s in scenes for o in s.objects)
    for cls in world.CLASSES:
        assert all(variants[v] >= 10 for v in cls.variants), (cls.name, variants)
    counts = Counter(len(s.objects) for s in scenes)
    assert set(counts) == {1, 2, 3}
    sides = [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for s in scenes for o in s.objects]
    assert min(sides) < 30 and max(sides) > 60
    # Occlusion: some objects overlap, yet every object keeps enough pixels for its tag to hold.
    overlapping = sum(
        1
        for s in scenes
        for i, a in enumerate(s.objects)
        for b in s.objects[i + 1 :]
        if a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]
    )
    assert overlapping >= 10
    assert all(o.mask.sum() >= world.MIN_VISIBLE_PIXELS for s in scenes for o in s.objects)


def test_context_backgrounds_follow_their_classes(scenes):
    for cls in (c for c in world.CLASSES if c.context):
        label = world.class_names().index(cls.name) + 1
        with_class = [s for s in scenes if label in s.tags]
        without = [s for s in scenes if label not in s.tags and not any(world.CLASSES[t - 1].context for t in s.tags)]
        on_context = np.mean([s.context == cls.context for s in with_class])
        stray = np.mean([s.context == cls.context for s in without])
        assert on_context >= 0.7 and stray <= 0.2, (cls.name, on_context, stray)
    seen = {s.context for s in scenes}
    assert set(world.CONTEXTS) <= seen
    # The context mask is background in the labels and lies where the context was painted.
    for s in scenes:
        assert not s.context_mask.any() if s.context is None else (s.label[s.context_mask] == 0).all()
    assert set(world.background_words()) >= {"water", "railway"}


def test_world_generation_does_not_import_torch():
    code = "import sys, ml.world.writer; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_demo_preset_uses_the_world_clip_and_its_context_words():
    config = resolve_config("demo")
    assert (config.models.clip_model, config.models.clip_pretrained) == ("pole-tiny", "pole-world")
    assert config.train_pole.background_words == world.background_words()
    assert config.select_prompts.num_synonyms >= max(len(c.variants) for c in world.CLASSES)
    assert config.train_split == "train"
