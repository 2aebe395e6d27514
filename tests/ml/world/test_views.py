"""Scene pools, views through crops and CAM-like masks, and the word weights and captions that fit them."""

from __future__ import annotations

import pytest
import torch

from ml.world import scenes as world
from ml.world import views


def column(word: str) -> int:
    return views.VOCABULARY.index(word)


def test_pool_holds_every_object_with_its_words(pool):
    for n in range(len(pool.images)):
        scene = world.render_scene(world.scene_rng(77, n))
        assert torch.equal(pool.images[n].permute(1, 2, 0), torch.from_numpy(scene.image))
        for o, obj in enumerate(scene.objects):
            assert torch.equal(pool.owner[n] == o + 1, torch.from_numpy(obj.mask))
            assert views.VARIANT_WORDS[pool.variants[n, o]] == obj.variant
            assert views.CLASS_WORDS[pool.labels[n, o] - 1] == obj.class_name


def test_word_weights_grow_with_what_is_seen():
    labels = torch.tensor([[1, 6, 0]])  # a circle and a boat
    variants = torch.tensor([[views.VARIANT_WORDS.index("ring"), views.VARIANT_WORDS.index("canoe"), -1]])
    seen = torch.tensor([[1.0, 0.2, 0.0]])
    water = views.CONTEXT_NAMES.index("water")
    weights = views._word_weights(labels, variants, seen, torch.tensor([water]), torch.tensor([0.5]))[0]
    share = views.CLASS_WORD_WEIGHT
    assert weights[column("ring")] == 1.0 and weights[column("circle")] == pytest.approx(share)
    assert weights[column("canoe")] == pytest.approx(0.2) and weights[column("boat")] == pytest.approx(0.2 * share)
    assert weights[column("disc")] == 0 and weights[column("railway")] == 0
    water_words = {float(weights[column(w)]) for w in world.CONTEXTS["water"]}  # shared equally
    assert len(water_words) == 1
    assert water_words.pop() * len(world.CONTEXTS["water"]) == pytest.approx(0.5 * views.CONTEXT_WEIGHT)
    assert views._visible_fraction(torch.tensor([0.1, 0.6, 1.0])).tolist() == [0.0, 1.0, 1.0]


def test_views_are_masked_crops_and_captions_fit_by_their_weakest_word(pool):
    gen = torch.Generator().manual_seed(0)
    sampled = views.sample_views(pool, 64, 64, gen)
    assert sampled.pixels.shape == (64, 3, 64, 64) and sampled.pixels.min() >= 0 and sampled.pixels.max() <= 1
    assert sampled.weights.shape == (64, len(views.VOCABULARY))
    assert sampled.weights.min() >= 0 and sampled.weights.max() <= 1
    assert (sampled.weights.sum(dim=1) > 0).float().mean() > 0.7  # most views show something nameable
    assert (sampled.pixels.flatten(1).amin(dim=1) == 0).any()  # some views are masked (black)
    captions, fit = views.captions_for(sampled.weights, gen)
    assert [views.TEMPLATE.format(w) for w in views.VOCABULARY] == captions[: len(views.VOCABULARY)]
    assert len(captions) == len(set(captions)) and fit.shape == (64, len(captions))
    for c, caption in enumerate(captions):
        padded = f" {caption.removesuffix('.')} "
        words = [w for w in views.VOCABULARY if f" {w} " in padded]
        expected = sampled.weights[:, [column(w) for w in words]].amin(dim=1)
        assert torch.equal(fit[:, c], expected), caption
