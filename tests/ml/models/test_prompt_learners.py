import pytest
import torch
import torch.nn.functional as F

from ml.models.clip_encoder import FrozenClip, cosine
from ml.models.prompt_learners import FixedPrompts, LearnedPrompts, build_prompt_strategy

CLASSES = ["cat", "dog", "dining table"]  # "dining table" is two tokens
TEMPLATE = "a photo of {}."


@pytest.fixture(scope="module")
def clip() -> FrozenClip:
    torch.manual_seed(0)
    return FrozenClip("pole-tiny", "random")


def test_clip_is_frozen_and_stays_in_eval_mode(clip):
    assert not any(p.requires_grad for p in clip.parameters())
    clip.train()
    assert not clip.training and not clip.model.training
    assert clip.image_size == (64, 64) and clip.embed_dim == 128


def test_images_are_resized_and_normalised_with_clip_statistics(clip):
    x01 = torch.rand(2, 3, 40, 50)
    resized = F.interpolate(x01, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(clip.model.visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.model.visual.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = clip.model.encode_image((resized - mean) / std)
    assert torch.allclose(clip.encode_images(x01), expected, atol=1e-5)


def test_image_encoding_is_differentiable_in_the_pixels(clip):
    x01 = torch.rand(1, 3, 64, 64, requires_grad=True)
    clip.encode_images(x01).sum().backward()
    assert x01.grad is not None and x01.grad.abs().sum() > 0


def test_text_features_are_cached_per_distinct_prompt(clip):
    calls = []
    original = clip.model.encode_text

    def counting(tokens, *args, **kwargs):
        calls.append(len(tokens))
        return original(tokens, *args, **kwargs)

    clip.model.encode_text = counting
    try:
        first = clip.encode_text(["a photo of a fox.", "a photo of a hen.", "a photo of a fox."])
        second = clip.encode_text(["a photo of a hen.", "a photo of a fox."])
    finally:
        del clip.model.encode_text
    assert calls == [2]  # one encoder pass, for the two distinct prompts
    assert torch.equal(first[0], first[2]) and torch.equal(second[0], first[1])
    with torch.no_grad():
        direct = original(clip.tokenize(["a photo of a fox."])).float()
    assert torch.allclose(first[0], direct[0], atol=1e-5)


def test_custom_embeddings_path_matches_the_text_encoder(clip):
    tokens = clip.tokenize(["a photo of cat.", "a photo of dining table."])
    via_embeddings = clip.encode_token_embeddings(clip.token_embeddings(tokens), tokens)
    with torch.no_grad():
        assert torch.allclose(via_embeddings, clip.model.encode_text(tokens).float(), atol=1e-5)


def test_manual_and_pole_prompts_use_the_class_name_or_the_chosen_word(clip):
    labels = torch.tensor([1, 2, 1])
    manual = build_prompt_strategy("manual", clip, CLASSES, TEMPLATE)
    expected = clip.encode_text(["a photo of cat.", "a photo of dog.", "a photo of cat."])
    assert torch.allclose(manual(clip, ["a", "b", "c"], labels), expected)
    chosen = {("a", 1): "kitty", ("b", 2): "puppy", ("c", 1): "cat"}
    pole = build_prompt_strategy("pole", clip, CLASSES, TEMPLATE, chosen=chosen)
    expected = clip.encode_text(["a photo of kitty.", "a photo of puppy.", "a photo of cat."])
    assert torch.allclose(pole(clip, ["a", "b", "c"], labels), expected)
    assert list(pole.parameters()) == [] and pole.spec()["chosen"][0] == ["a", 1, "kitty"]
    with pytest.raises(KeyError, match="select_prompts chose no word for image 'z'"):
        pole(clip, ["z"], torch.tensor([1]))


@pytest.mark.parametrize("strategy", ["coop", "defo", "target"])
def test_learnable_prompts_start_at_the_manual_prompt(clip, strategy):
    # Context starts from "a photo of" and class vectors from the class word, so for one-token
    # class names the learnable prompt begins exactly where the manual prompt is.
    learned = build_prompt_strategy(strategy, clip, CLASSES, TEMPLATE, context_length=3)
    assert isinstance(learned, LearnedPrompts)
    labels = torch.tensor([2, 1])
    manual = FixedPrompts(CLASSES, TEMPLATE)(clip, ["a", "b"], labels)
    with torch.no_grad():
        assert torch.allclose(learned(clip, ["a", "b"], labels), manual, atol=1e-5)


@pytest.mark.parametrize(
    ("strategy", "learnt"),
    [("coop", {"context"}), ("defo", {"context", "class_vectors"}), ("target", {"class_vectors"})],
)
def test_learnable_parts_get_gradients_and_frozen_parts_do_not_change(clip, strategy, learnt):
    learned = build_prompt_strategy(strategy, clip, CLASSES, TEMPLATE, context_length=3)
    assert {name for name, _ in learned.named_parameters()} == learnt
    clip_before = {k: v.clone() for k, v in clip.state_dict().items()}
    base_before = learned.base.clone()
    optimizer = torch.optim.SGD(learned.parameters(), lr=1.0)
    target = F.normalize(torch.randn(1, clip.embed_dim), dim=-1)
    for _ in range(2):
        optimizer.zero_grad()
        loss = -cosine(learned(clip, ["a", "b", "c"], torch.tensor([1, 3, 3])), target).sum()
        loss.backward()
        for name, p in learned.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        optimizer.step()
    assert all(torch.equal(v, clip_before[k]) for k, v in clip.state_dict().items())
    assert torch.equal(learned.base, base_before)
    assert set(learned.state_dict()) == learnt  # the checkpoint keeps only what was learnt


def test_class_vectors_of_untagged_classes_get_no_gradient(clip):
    learned = build_prompt_strategy("target", clip, CLASSES, TEMPLATE)
    learned(clip, ["a"], torch.tensor([2])).sum().backward()
    grad = learned.class_vectors.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0


def test_context_of_another_length_than_the_template_starts_random(clip):
    learned = build_prompt_strategy("coop", clip, CLASSES, TEMPLATE, context_length=5)
    assert learned.context.shape == (5, learned.base.shape[-1])
    assert learned(clip, ["a"], torch.tensor([1])).shape == (1, clip.embed_dim)
