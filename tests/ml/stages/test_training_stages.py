"""Stages 1-3 (train_cam, select_prompts, train_pole) on the tiny dataset, at a CPU-friendly size."""

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from ml.data import Dataset, ImageRecord, load_dataset
from ml.device import seed_everything
from ml.loaders import TrainImages, to_tensor01
from ml.models.cam_net import CamNet, load_cam_net
from ml.models.clip_encoder import FrozenClip, cosine
from ml.pipeline import run_pipeline
from ml.runtime import Cancelled, StageContext, sha256_file
from ml.spec.config import resolve_config
from ml.stages import train_cam, train_pole
from ml.stages.select_prompts import choose_words, masked_images, tag_cams
from ml.training import poly_sgd, training_images
from pole.cli import main as pole
from tests.conftest import make_tiny_dataset

SMALL_AUGMENT = {"resize_long": [48, 80], "crop_size": 64}
SYNONYMS = {"square": ["box", "block", "tile"], "circle": ["ring", "disc"], "triangle": ["wedge"]}
FAST = {
    "device": "cpu",
    "models": {"clip_pretrained": "random"},
    "train_cam": {"epochs": 2, "batch_size": 4, "augment": SMALL_AUGMENT},
    "select_prompts": {"batch_size": 5, "num_synonyms": 2, "synonyms": SYNONYMS},
    "train_pole": {"epochs": 1, "batch_size": 6, "augment": SMALL_AUGMENT},
}
STAGES = ("train_cam", "select_prompts", "train_pole")


def fast_config(**overrides):
    return resolve_config("cpu-small", FAST, overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """One `pole run ... --until train-pole` of the tiny dataset, shared by the tests that read it."""
    root = tmp_path_factory.mktemp("run")
    dataset = make_tiny_dataset(root / "tiny")
    config_file = root / "fast.json"
    config_file.write_text(json.dumps(FAST))
    out = root / "out"
    argv = ["run", str(dataset), "--out", str(out), "--preset", "cpu-small", "--config", str(config_file)]
    assert pole([*argv, "--until", "train-pole"]) == 0
    return dataset, out


def read_json(path: Path):
    return json.loads(path.read_text())


def test_cli_run_until_train_pole_writes_each_stage(finished_run):
    _, out = finished_run
    for stage in STAGES:
        assert (out / stage / "stage.json").is_file(), stage
    assert not (out / "make_cams").exists()
    assert not list(out.glob("*.partial"))


def test_train_cam_checkpoint_log_and_record(finished_run):
    _, out = finished_run
    net, checkpoint = load_cam_net(out / "train_cam" / "model.pt")
    assert net.model_args == {"backbone": "resnet18", "num_classes": 3}
    assert checkpoint["config"]["train_cam"]["epochs"] == 2
    steps = read_json(out / "train_cam" / "log.json")["steps"]
    assert len(steps) == 2 * math.ceil(12 / 4)
    assert steps[0]["lr"] > steps[-1]["lr"] > 0  # poly decay
    record = read_json(out / "train_cam" / "stage.json")
    assert record["checkpoints"]["model.pt"] == sha256_file(out / "train_cam" / "model.pt")
    assert record["weights"]["cam_backbone"]["source"] == "random" and record["seed"] == 0
    assert record["images"] == 12


def test_selections_hold_every_candidate_score_and_the_argmax(finished_run):
    dataset_root, out = finished_run
    dataset = load_dataset(dataset_root)
    lines = (out / "select_prompts" / "selections.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["image"], r["label"]) for r in records] == [(im.id, t) for im in dataset.images for t in im.tags]
    for r in records:
        assert r["class"] == dataset.classes[r["label"] - 1] and r["candidates"][0] == r["class"]
        assert set(r["candidates"][1:]) <= set(SYNONYMS[r["class"]]) and len(r["candidates"]) <= 3
        assert len(r["scores"]) == len(r["candidates"])
        assert r["chosen"] == r["candidates"][max(range(len(r["scores"])), key=r["scores"].__getitem__)]
    candidates = read_json(out / "select_prompts" / "candidates.json")
    assert set(candidates) == set(SYNONYMS)
    assert candidates["square"]["source"] == "job" and len(candidates["square"]["words"]) == 3  # name + m=2
    assert len(candidates["square"]["scores"]) == 3
    record = read_json(out / "select_prompts" / "stage.json")
    assert record["weights"]["clip"]["source"] == "random"
    assert "random_clip" in {w["check"] for w in record["warnings"]}


def test_train_pole_checkpoint_is_self_describing(finished_run):
    _, out = finished_run
    net, checkpoint = load_cam_net(out / "train_pole" / "model.pt")
    initial, _ = load_cam_net(out / "train_cam" / "model.pt")
    assert not torch.equal(net.classifier.weight, initial.classifier.weight)  # it trained
    assert torch.equal(net.backbone.stage1[0].weight, initial.backbone.stage1[0].weight)  # conv1 frozen
    assert checkpoint["prompt"]["spec"]["strategy"] == "pole" and checkpoint["prompt"]["spec"]["chosen"]
    assert checkpoint["adaptors"]["image"]["args"] == {"dim": 128, "mode": "learnable", "ratio": 0.2}
    assert checkpoint["adaptors"]["text"]["state_dict"]["ratio"].shape == (128,)
    assert checkpoint["clip"]["source"] == "random"
    steps = read_json(out / "train_pole" / "log.json")["steps"]
    assert len(steps) == 2 and {"total", "otm", "btm", "cbs", "reg", "lr"} <= set(steps[0])
    for step in steps:
        expected = 10 * step["otm"] + 25 * step["btm"] + step["cbs"] + 0 * step["reg"]
        assert step["total"] == pytest.approx(expected, rel=1e-4)
    record = read_json(out / "train_pole" / "stage.json")
    assert record["checkpoints"]["model.pt"] == sha256_file(out / "train_pole" / "model.pt")
    assert record["inputs"]["train_cam/model.pt"] == sha256_file(out / "train_cam" / "model.pt")
    assert [w["message"] for w in record["warnings"]] == ["CLIP weights are random: the guidance is noise"]


def test_a_second_run_is_a_no_op(finished_run):
    dataset_root, out = finished_run
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()}
    events = []
    run_pipeline(
        load_dataset(dataset_root), out, fast_config(), on_stage=lambda s, e: events.append((s, e)), until="train_pole"
    )
    assert events == [(stage, "skip") for stage in STAGES]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*") if p.is_file()} == before


def test_resume_wipes_a_partial_stage_and_training_is_deterministic(finished_run, tmp_path):
    dataset_root, shared_out = finished_run
    out = tmp_path / "out"
    (out / "train_cam.partial").mkdir(parents=True)
    (out / "train_cam.partial" / "model.pt").write_text("half written")
    run_pipeline(load_dataset(dataset_root), out, fast_config(), until="train_cam")
    assert not (out / "train_cam.partial").exists()
    mine, _ = load_cam_net(out / "train_cam" / "model.pt")
    shared, _ = load_cam_net(shared_out / "train_cam" / "model.pt")
    for (name, a), b in zip(mine.state_dict().items(), shared.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_cam_training_steps_reduce_the_loss(tiny_dataset):
    config = fast_config()
    dataset = load_dataset(tiny_dataset)
    seed_everything(0)
    net = CamNet("resnet18", dataset.num_classes, "random").train()
    batch = torch.utils.data.default_collate(
        [TrainImages(dataset.images, 3, config.train_cam.augment)[i] for i in range(8)]
    )
    optimizer, _ = train_cam.cam_optimizer(net, config.train_cam, total_steps=100)
    losses = []
    for _ in range(6):
        loss = train_cam.batch_loss(net, batch["image"], batch["label"])
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def aligned_clip(tmp_path_factory) -> str:
    """A tiny CLIP whose image and text features share a direction (cosines near 0.5, not clamped).

    A random CLIP gives cosines of either sign; the negative ones are clamped and carry no
    gradient, which would leave nothing to learn in a few steps.
    """
    torch.manual_seed(0)
    model = open_clip.create_model("pole-tiny")
    with torch.no_grad():
        # Both towers end in the same constant direction: the text's final LayerNorm bias, projected
        # alike by the text projection and (through the attention pool's output bias) the image tower.
        model.ln_final.bias.fill_(1.0)
        model.visual.attnpool.c_proj.bias.copy_(model.ln_final.bias @ model.text_projection)
    path = tmp_path_factory.mktemp("clip") / "aligned.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def pole_context(out: Path, dataset_root: Path, clip_file: str, prompt: str) -> StageContext:
    """train_pole's context in `out` (which holds train_cam/), with the aligned CLIP and `prompt`."""
    config = fast_config(train_pole={"prompt": prompt}, models={"clip_pretrained": clip_file})
    return StageContext(load_dataset(dataset_root), out, config, stage="train_pole")


def pole_objective_and_batch(finished_run, aligned_clip) -> tuple[StageContext, train_pole.PoleObjective, dict]:
    """train_pole's context, its objective in training mode and a batch of 6 augmented images."""
    dataset_root, out = finished_run
    ctx = pole_context(out, dataset_root, aligned_clip, "pole")
    objective = train_pole.build_objective(ctx, torch.device("cpu")).train()
    data = TrainImages(ctx.dataset.images, 3, ctx.config.train_pole.augment)
    return ctx, objective, torch.utils.data.default_collate([data[i] for i in range(6)])


def test_pole_training_steps_reduce_the_loss(finished_run, aligned_clip):
    ctx, objective, batch = pole_objective_and_batch(finished_run, aligned_clip)
    optimizer, _ = poly_sgd(objective.param_groups(), ctx.config.train_pole.optim, total_steps=100)
    losses = []
    for _ in range(4):
        loss = objective(batch["image"], batch["label"], batch["id"])
        losses.append(loss.total.item())
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("prompt", ["coop", "defo", "target"])
def test_learnable_prompt_parts_train_and_clip_stays_frozen(finished_run, aligned_clip, prompt):
    dataset_root, out = finished_run
    ctx = pole_context(out, dataset_root, aligned_clip, prompt)
    objective = train_pole.build_objective(ctx, torch.device("cpu")).train()
    groups = objective.param_groups()
    prompt_parameters = list(objective.prompts.parameters())
    assert groups[-1]["params"] == prompt_parameters
    assert groups[-1]["lr"] == pytest.approx(2.5e-4 * 0.001)
    clip_before = {k: v.clone() for k, v in objective.clip.state_dict().items()}
    data = TrainImages(ctx.dataset.images, 3, ctx.config.train_pole.augment)
    batch = torch.utils.data.default_collate([data[i] for i in range(3, 6)])  # two-tag images
    objective(batch["image"], batch["label"], batch["id"]).total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompt_parameters)
    assert all(p.grad is None for p in objective.clip.parameters())
    torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.1).step()
    assert all(torch.equal(v, clip_before[k]) for k, v in objective.clip.state_dict().items())


def test_train_pole_with_learnt_prompts_needs_no_selection(finished_run, aligned_clip, tmp_path):
    dataset_root, shared_out = finished_run
    shutil.copytree(shared_out / "train_cam", tmp_path / "train_cam")
    train_pole.run(pole_context(tmp_path, dataset_root, aligned_clip, "defo"))
    checkpoint = torch.load(tmp_path / "train_pole" / "model.pt", weights_only=False)
    assert checkpoint["prompt"]["spec"]["strategy"] == "defo"
    assert set(checkpoint["prompt"]["state_dict"]) == {"context", "class_vectors"}
    assert checkpoint["clip"]["source"] == aligned_clip
    assert read_json(tmp_path / "train_pole" / "stage.json")["warnings"] == []
    assert not (tmp_path / "select_prompts").exists()


def test_pole_prompts_need_the_selection_stage(finished_run, aligned_clip, tmp_path):
    dataset_root, shared_out = finished_run
    shutil.copytree(shared_out / "train_cam", tmp_path / "train_cam")
    with pytest.raises(FileNotFoundError, match="select_prompts stage first"):
        train_pole.build_objective(pole_context(tmp_path, dataset_root, aligned_clip, "pole"), torch.device("cpu"))


def test_selection_picks_the_argmax_and_stores_every_score():
    torch.manual_seed(0)
    clip = FrozenClip("pole-tiny", "random")
    pixels = torch.rand(2, 3, 64, 64)
    features = clip.encode_images(pixels).detach()
    words = {"cat": ["cat", "kitty", "feline"]}
    # The last candidate of the second pair is that image's own feature: it must win.
    word_features = {"cat": torch.stack([-features[1], torch.randn(clip.embed_dim), features[1]])}
    records = choose_words(clip, pixels, [("a", 1), ("b", 1)], ["cat"], words, word_features)
    expected = cosine(features, word_features["cat"])
    for record, row in zip(records, expected, strict=True):
        assert record["scores"] == pytest.approx(row.tolist(), abs=1e-5)
        assert record["chosen"] == words["cat"][int(row.argmax())]
        assert record["candidates"] == words["cat"] and record["class"] == "cat"
    assert records[1]["chosen"] == "feline" and records[1]["scores"][2] == pytest.approx(1.0, abs=1e-5)


def test_masked_images_are_float_rgb_scaled_by_the_normalised_cam():
    seed_everything(0)
    net = CamNet("resnet18", 3, "random").eval()
    red = np.zeros((40, 56, 3), np.uint8)
    red[..., 0] = 255  # a saturated red image: a uint8 image*cam*255 product would overflow here
    cams = tag_cams(net, red, [1, 3], fast_config())
    with torch.no_grad():
        masked = masked_images(to_tensor01(red), cams, (32, 32), "black")
    assert masked.shape == (2, 3, 32, 32)
    assert masked[:, 1:].abs().max() == 0  # green and blue stay empty: channels are not swapped
    assert masked[:, 0].min() >= 0 and masked[:, 0].amax(dim=(1, 2)).max() <= 1 + 1e-6
    assert masked[:, 0].amax(dim=(1, 2)).min() > 0.5  # each tag's map reaches ~1 somewhere


def test_fewer_images_than_a_batch_and_an_unreadable_one(tiny_dataset, tmp_path):
    dataset = load_dataset(tiny_dataset)
    few = Dataset(dataset.root, dataset.layout, dataset.classes, dataset.images[:3])
    few.images[1].image.write_bytes(b"not an image any more")
    config = fast_config(train_cam={"epochs": 2, "batch_size": 8})
    ctx = StageContext(few, tmp_path, config, stage="train_cam")
    train_cam.run(ctx)
    assert set(ctx.failed_images) == {few.images[1].id}
    assert read_json(tmp_path / "failed_images.json") == ctx.failed_images
    assert len(read_json(tmp_path / "train_cam" / "log.json")["steps"]) == 2  # one short batch per epoch
    assert read_json(tmp_path / "train_cam" / "stage.json")["images"] == 2


def test_cancel_between_batches_leaves_no_stage_output(tiny_dataset, tmp_path):
    ctx = StageContext(
        load_dataset(tiny_dataset), tmp_path, fast_config(), stage="train_cam", should_cancel=lambda: True
    )
    with pytest.raises(Cancelled):
        train_cam.run(ctx)
    assert not (tmp_path / "train_cam").exists()


def test_training_uses_only_the_train_split(tmp_path):
    splits = ("train", "train", "val")
    images = [ImageRecord(f"i{n}", tmp_path / f"i{n}.png", (1,), split=split) for n, split in enumerate(splits)]
    dataset = Dataset(tmp_path, "manifest", ["cat"], images)
    ctx = StageContext(dataset, tmp_path, fast_config(train_split="train"), failed_images={"i1": "broken"})
    assert [im.id for im in training_images(ctx)] == ["i0"]
    assert len(training_images(replace(ctx, config=fast_config()))) == 2
    with pytest.raises(ValueError, match="train_split='test', dataset splits: train, val"):
        training_images(replace(ctx, config=fast_config(train_split="test")))


def test_augmented_crops_are_unnormalised_and_padded_with_zero(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    config = fast_config().train_cam.augment
    data = TrainImages(dataset.images, 3, replace(config, resize_long=(40, 40), crop_size=64))
    item = data[0]
    assert item["image"].shape == (3, 64, 64) and item["ok"]
    assert item["image"].min() >= 0 and item["image"].max() <= 1
    assert (item["image"].sum(0) == 0).float().mean() > 0.5  # a 40 px image in a 64 px crop: mostly pad
    assert torch.equal(item["label"], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(data[0]["image"], item["image"])  # same seed, epoch, index: same crop
    data.epoch = 1
    assert not torch.equal(data[0]["image"], item["image"])
    assert to_tensor01(torch.zeros(2, 2, 3, dtype=torch.uint8).numpy()).shape == (3, 2, 2)


def test_clipping_scales_gradients_down_to_the_limit_and_reports_the_norm_before(finished_run, aligned_clip):
    _, objective, batch = pole_objective_and_batch(finished_run, aligned_clip)

    def gradient_norm() -> float:
        grads = [p.grad.flatten() for p in objective.parameters() if p.grad is not None]
        return float(torch.cat(grads).norm())

    objective(batch["image"], batch["label"], batch["id"]).total.backward()
    natural = gradient_norm()
    assert train_pole.clip_gradients(objective, 0.0) == pytest.approx(natural, rel=1e-5)
    assert gradient_norm() == pytest.approx(natural, rel=1e-5)  # 0 leaves them alone
    limit = natural / 10
    assert train_pole.clip_gradients(objective, limit) == pytest.approx(natural, rel=1e-5)
    assert gradient_norm() == pytest.approx(limit, rel=1e-3)


def test_a_run_whose_maps_saturated_is_flagged():
    healthy = [{"grad_norm": 3.0}] * 9 + [{"grad_norm": 0.0}]
    stuck = [{"grad_norm": 379.0}, {"grad_norm": 46952.0}] + [{"grad_norm": 0.0}] * 8
    assert train_pole.saturation_warning(healthy) == []
    (warning,) = train_pole.saturation_warning(stuck)
    assert warning["check"] == "saturated_training"
    assert "8 of 10 steps had no gradient" in warning["message"] and "max_grad_norm" in warning["message"]
