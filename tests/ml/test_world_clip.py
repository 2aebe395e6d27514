import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from ml import world_clip
from ml.data import world
from ml.models.clip_encoder import FrozenClip, cosine
from ml.runtime import sha256_file
from ml.weights import SHIPPED_CLIP, resolve_clip
from pole.cli import main


@pytest.fixture(scope="module")
def pool() -> world_clip.ScenePool:
    return world_clip.render_pool(24, seed=77, size=128)


def column(word: str) -> int:
    return world_clip.VOCABULARY.index(word)


def test_pool_holds_every_object_with_its_words(pool):
    for n in range(len(pool.images)):
        scene = world.render_scene(world.scene_rng(77, n))
        assert torch.equal(pool.images[n].permute(1, 2, 0), torch.from_numpy(scene.image))
        for o, obj in enumerate(scene.objects):
            assert torch.equal(pool.owner[n] == o + 1, torch.from_numpy(obj.mask))
            assert world_clip.VARIANT_WORDS[pool.variants[n, o]] == obj.variant
            assert world_clip.CLASS_WORDS[pool.labels[n, o] - 1] == obj.class_name


def test_word_weights_grow_with_what_is_seen():
    labels = torch.tensor([[1, 6, 0]])  # a circle and a boat
    variants = torch.tensor([[world_clip.VARIANT_WORDS.index("ring"), world_clip.VARIANT_WORDS.index("canoe"), -1]])
    seen = torch.tensor([[1.0, 0.2, 0.0]])
    water = world_clip.CONTEXT_NAMES.index("water")
    weights = world_clip._word_weights(labels, variants, seen, torch.tensor([water]), torch.tensor([0.5]))[0]
    share = world_clip.CLASS_WORD_WEIGHT
    assert weights[column("ring")] == 1.0 and weights[column("circle")] == pytest.approx(share)
    assert weights[column("canoe")] == pytest.approx(0.2) and weights[column("boat")] == pytest.approx(0.2 * share)
    assert weights[column("disc")] == 0 and weights[column("railway")] == 0
    water_words = {float(weights[column(w)]) for w in world.CONTEXTS["water"]}  # shared equally
    assert len(water_words) == 1
    assert water_words.pop() * len(world.CONTEXTS["water"]) == pytest.approx(0.5 * world_clip.CONTEXT_WEIGHT)
    assert world_clip._visible_fraction(torch.tensor([0.1, 0.6, 1.0])).tolist() == [0.0, 1.0, 1.0]


def test_views_are_masked_crops_and_captions_fit_by_their_weakest_word(pool):
    gen = torch.Generator().manual_seed(0)
    views = world_clip.sample_views(pool, 64, 64, gen)
    assert views.pixels.shape == (64, 3, 64, 64) and views.pixels.min() >= 0 and views.pixels.max() <= 1
    assert views.weights.shape == (64, len(world_clip.VOCABULARY))
    assert views.weights.min() >= 0 and views.weights.max() <= 1
    assert (views.weights.sum(dim=1) > 0).float().mean() > 0.7  # most views show something nameable
    assert (views.pixels.flatten(1).amin(dim=1) == 0).any()  # some views are masked (black)
    captions, fit = world_clip.captions_for(views.weights, gen)
    assert [world_clip.TEMPLATE.format(w) for w in world_clip.VOCABULARY] == captions[: len(world_clip.VOCABULARY)]
    assert len(captions) == len(set(captions)) and fit.shape == (64, len(captions))
    for c, caption in enumerate(captions):
        padded = f" {caption.removesuffix('.')} "
        words = [w for w in world_clip.VOCABULARY if f" {w} " in padded]
        expected = views.weights[:, [column(w) for w in words]].amin(dim=1)
        assert torch.equal(fit[:, c], expected), caption


def test_contrastive_loss_prefers_aligned_features():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(5, 16), dim=-1)
    fit = torch.eye(5).repeat(2, 1)  # (10 views, 5 captions)
    aligned = F.normalize(fit @ text + 0.05 * torch.randn(10, 16), dim=-1)
    shuffled = aligned[torch.randperm(10)]
    scale = torch.tensor(20.0)
    loss = world_clip.contrastive_loss
    assert loss(aligned, text, scale, fit) < loss(shuffled, text, scale, fit)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(pool):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = world_clip.create_model("pole-tiny")
    tokens = world_clip.TokenCache("pole-tiny")
    views = world_clip.sample_views(pool, 16, world_clip.input_size(model), gen)
    captions, fit = world_clip.captions_for(views.weights, gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        image = F.normalize(model.encode_image(world_clip.normalise(views.pixels, model)), dim=-1)
        text = F.normalize(model.encode_text(tokens(captions)), dim=-1)
        loss = world_clip.contrastive_loss(image, text, model.logit_scale.exp(), fit)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Predicting uniformly over the batch's captions (and views) scores (log C + log B) / 2.
    uniform = (math.log(len(captions)) + math.log(len(views.pixels))) / 2
    assert losses[-1] < min(losses[0], uniform), (losses, uniform)


def test_train_clip_command_writes_a_checkpoint_open_clip_loads(tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    args = ["--out", str(out), "--steps", "3", "--scenes", "12", "--batch-size", "8", "--eval-scenes", "6"]
    assert main(["world", "train-clip", *args]) == 0
    assert "zero-shot on" in capsys.readouterr().out
    provenance = json.loads(out.with_suffix(".json").read_text())
    assert provenance["sha256"] == sha256_file(out) and provenance["dtype"] == "float16"
    assert provenance["train_config"]["steps"] == 3 and provenance["wall_seconds"] > 0
    for key in ("crops", "masked", "cam_masked"):
        assert 0 <= provenance["zero_shot"][key]["class_accuracy"] <= 1
    stored = torch.load(out, weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    model = open_clip.create_model("pole-tiny", pretrained=str(out))
    for name, value in model.state_dict().items():
        assert torch.equal(value, stored[name].to(value.dtype)), name


def test_shipped_clip_ranks_the_right_class_first_on_held_out_crops():
    weights = resolve_clip("pole-tiny", "pole-world")
    provenance = json.loads(weights.path.with_suffix(".json").read_text())
    assert weights.path == SHIPPED_CLIP[("pole-tiny", "pole-world")] and weights.sha256 == provenance["sha256"]
    assert weights.path.stat().st_size <= 25 * 2**20
    clip = FrozenClip("pole-tiny", "pole-world")
    # Two scenes of each class alone, from a seed that neither training nor the provenance figures used.
    unseen_seed = max(provenance["data"]["train_scenes"]["seed"], provenance["data"]["eval_scenes"]["seed"]) + 1
    labels = [[label] for label in range(1, len(world.CLASSES) + 1) for _ in range(2)]
    held_out = world_clip.render_pool(len(labels), unseen_seed, labels=labels)
    crops, truth, _, _ = world_clip.object_crops(held_out, clip.image_size[0])
    with torch.no_grad():
        scores = cosine(clip.encode_images(crops), clip.encode_text([f"a photo of {c}." for c in world.class_names()]))
    assert (scores.argmax(dim=1) + 1).tolist() == truth.tolist()
