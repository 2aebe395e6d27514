"""The contrastive loss, a few training steps, and `pole world train-clip` writing a checkpoint open_clip loads."""

from __future__ import annotations

import json
import math

import open_clip
import torch
import torch.nn.functional as F

from ml.runtime import sha256_file
from ml.world import clip_training, views
from pole.cli import main


def test_contrastive_loss_prefers_aligned_features():
    torch.manual_seed(0)
    text = F.normalize(torch.randn(5, 16), dim=-1)
    fit = torch.eye(5).repeat(2, 1)  # (10 views, 5 captions)
    aligned = F.normalize(fit @ text + 0.05 * torch.randn(10, 16), dim=-1)
    shuffled = aligned[torch.randperm(10)]
    scale = torch.tensor(20.0)
    loss = clip_training.contrastive_loss
    assert loss(aligned, text, scale, fit) < loss(shuffled, text, scale, fit)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(pool):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    model = clip_training.create_model("pole-tiny")
    tokens = clip_training.TokenCache("pole-tiny")
    sampled = views.sample_views(pool, 16, clip_training.input_size(model), gen)
    captions, fit = views.captions_for(sampled.weights, gen)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        image = F.normalize(model.encode_image(clip_training.normalise(sampled.pixels, model)), dim=-1)
        text = F.normalize(model.encode_text(tokens(captions)), dim=-1)
        loss = clip_training.contrastive_loss(image, text, model.logit_scale.exp(), fit)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Predicting uniformly over the batch's captions (and views) scores (log C + log B) / 2.
    uniform = (math.log(len(captions)) + math.log(len(sampled.pixels))) / 2
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
