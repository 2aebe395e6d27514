"""Each setting where pole may depart from the public CLIMS/POLE code changes what it says it does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ml.cams import cam_precision, multiscale_cams
from ml.data import load_dataset
from ml.loaders import TrainImages, to_tensor01
from ml.models.backbone import IMAGENET_MEAN
from ml.models.cam_net import CamNet, load_cam_net, save_cam_net
from ml.models.clip_encoder import FrozenClip, masked_for_clip
from ml.runtime import StageContext
from ml.spec.config import config_to_dict, resolve_config
from ml.spec.layout import CHECKPOINT, STAGE_RECORD
from ml.stages import select_prompts, train_pole
from ml.stages.select_prompts import masked_images, tag_cams
from ml.training import poly_sgd

SMALL_AUGMENT = {"resize_long": [40, 40], "crop_size": 64}  # the tiny images' crops are mostly padding
FAST = {
    "device": "cpu",
    "models": {"clip_pretrained": "random"},
    "train_pole": {"prompt": "manual", "epochs": 1, "batch_size": 6, "augment": SMALL_AUGMENT},
}


def stage_context(dataset_root: Path, out: Path, stage: str, **overrides) -> StageContext:
    """A cpu-small context on the tiny dataset whose out/ holds a train_cam checkpoint (random weights)."""
    config = resolve_config("cpu-small", FAST, overrides)
    if not (out / "train_cam").is_dir():
        torch.manual_seed(0)
        (out / "train_cam").mkdir(parents=True)
        save_cam_net(out / "train_cam" / CHECKPOINT, CamNet("resnet18", 3, "random"), config_to_dict(config))
    return StageContext(load_dataset(dataset_root), out, config, stage=stage)


def crops_with_padding(ctx: StageContext) -> dict:
    data = TrainImages(ctx.dataset.images, 3, ctx.config.train_pole.augment)
    return torch.utils.data.default_collate([data[i] for i in range(3, 6)])  # two tags each


# optim.momentum


def sgd_steps(optim: dict, lr: float, count: int) -> list[torch.Tensor]:
    """The steps poly SGD (train_cam.optim overridden by `optim`) takes on a constant gradient, at the
    learning rate the schedule starts with."""
    param = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optim = resolve_config("paper", {"train_cam": {"optim": optim}}).train_cam.optim
    optimizer, _ = poly_sgd([{"params": [param], "lr": lr}], optim, total_steps=count)
    steps = []
    for _ in range(count):
        before = param.detach().clone()
        param.grad = torch.tensor([0.5, 0.25])
        optimizer.step()
        steps.append(before - param.detach())
    return steps


def test_the_public_codes_momentum_makes_every_step_lr_times_the_gradient():
    param, grad, lr, decay = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.25]), 0.1, 1e-4
    for step in sgd_steps({}, lr, 5):  # paper's optim: momentum 0, weight decay 1e-4
        torch.testing.assert_close(step, lr * (grad + decay * param), rtol=1e-5, atol=0)
        param = param - step
    # Real momentum 0.9 at the same rate builds up to steps 10x larger; with the rate divided by 10
    # it builds up to the public code's steps.
    without_decay = {"momentum": 0.9, "weight_decay": 0.0}
    torch.testing.assert_close(sgd_steps(without_decay, lr, 200)[-1], 10 * lr * grad, rtol=1e-4, atol=0)
    torch.testing.assert_close(sgd_steps(without_decay, lr / 10, 200)[-1], lr * grad, rtol=1e-4, atol=0)


# train_pole.batchnorm


@pytest.mark.parametrize("mode", ["batch", "frozen"])
def test_batch_statistics_move_during_train_pole_and_frozen_ones_do_not(tiny_dataset, tmp_path, mode):
    ctx = stage_context(tiny_dataset, tmp_path, "train_pole", train_pole={"batchnorm": mode})
    train_pole.run(ctx)
    before, _ = load_cam_net(tmp_path / "train_cam" / CHECKPOINT)
    after, checkpoint = load_cam_net(tmp_path / "train_pole" / CHECKPOINT)
    stats = {name: b for name, b in before.backbone.named_buffers() if name.endswith("running_mean")}
    moved = {name for name, b in after.backbone.named_buffers() if name in stats and not torch.equal(b, stats[name])}
    assert moved == (set(stats) if mode == "batch" else set())  # bn1 included: only its parameters are frozen
    assert torch.equal(after.backbone.stage1[0].weight, before.backbone.stage1[0].weight)  # conv1 frozen
    assert checkpoint["freeze_bn"] == (mode == "frozen")


# train_pole.clip_fill and select_prompts.clip_fill


def encoder_inputs(clip: FrozenClip, calls: list[torch.Tensor]):
    """A stand-in for CLIP's image encoder that records the tensor it receives."""
    original = clip.model.encode_image

    def recording(pixels, *args, **kwargs):
        calls.append(pixels.detach().clone())
        return original(pixels, *args, **kwargs)

    return recording


@pytest.mark.parametrize(("fill", "grey"), [("mean", IMAGENET_MEAN), ("black", (0.0, 0.0, 0.0))])
def test_clip_receives_the_fill_where_the_map_is_zero(fill, grey):
    torch.manual_seed(0)
    clip = FrozenClip("pole-tiny", "random")
    x01 = torch.rand(2, 3, *clip.image_size)
    maps = torch.zeros(2, 1, *clip.image_size)
    maps[..., :, 32:] = 0.7
    calls: list[torch.Tensor] = []
    clip.model.encode_image = encoder_inputs(clip, calls)
    with torch.no_grad():
        clip.encode_images(masked_for_clip(x01, maps, fill))
    expected = ((torch.tensor(grey).view(1, 3, 1) - clip.mean[..., 0]) / clip.std[..., 0]).expand(2, 3, 64)
    for column in range(32):
        assert torch.equal(calls[0][..., column], expected)
    x01_mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    shown = x01_mean + 0.7 * (x01 - x01_mean) if fill == "mean" else 0.7 * x01
    torch.testing.assert_close(masked_for_clip(x01, maps, fill)[..., 32:], shown[..., 32:])


@pytest.mark.parametrize(("fill", "grey"), [("mean", IMAGENET_MEAN), ("black", (0.0, 0.0, 0.0))])
def test_train_pole_shows_clip_the_fill_where_the_crop_was_padded(tiny_dataset, tmp_path, fill, grey):
    ctx = stage_context(tiny_dataset, tmp_path, "train_pole", train_pole={"clip_fill": fill})
    objective = train_pole.build_objective(ctx, torch.device("cpu"))
    calls: list[torch.Tensor] = []
    objective.clip.model.encode_image = encoder_inputs(objective.clip, calls)
    batch = crops_with_padding(ctx)
    objective(batch["image"], batch["label"], batch["id"], batch["padding"])
    clip = objective.clip
    expected = (torch.tensor(grey).view(3, 1) - clip.mean[0, :, 0]) / clip.std[0, :, 0]
    padded_rows = batch["padding"][:, 0].amin(dim=2) == 1  # (B, C): rows of the crop with no image pixel
    rows, _ = batch["label"].nonzero(as_tuple=True)
    for pair, image in enumerate(rows.tolist() * 2):  # foreground images, then background ones
        row = int(padded_rows[image].nonzero()[0, 0])  # crop and CLIP input are both 64 px here
        torch.testing.assert_close(calls[0][pair, :, row], expected.expand(3, 64), atol=1e-6, rtol=0)


def test_selection_shows_clip_the_mean_grey_where_the_cam_is_zero():
    x01 = torch.rand(3, 20, 30)
    cams = torch.zeros(2, 20, 30)
    for fill, grey in (("mean", IMAGENET_MEAN), ("black", (0.0, 0.0, 0.0))):
        masked = masked_images(x01, cams, (10, 15), fill)
        torch.testing.assert_close(masked, torch.tensor(grey).view(1, 3, 1, 1).expand(2, 3, 10, 15))


# train_pole.cbs_features


@pytest.mark.parametrize("features", ["raw", "adapted"])
def test_raw_cbs_ignores_the_adaptors(tiny_dataset, tmp_path, features):
    section = {"cbs_features": features, "adaptor": "learnable", "cbs_threshold": -1.0}  # every pair counts
    ctx = stage_context(tiny_dataset, tmp_path, "train_pole", train_pole=section)
    objective = train_pole.build_objective(ctx, torch.device("cpu")).eval()
    batch = crops_with_padding(ctx)
    with torch.no_grad():
        first = objective(batch["image"], batch["label"], batch["id"], batch["padding"])
        for adaptor in (objective.image_adaptor, objective.text_adaptor):
            for parameter in adaptor.parameters():
                parameter.add_(torch.randn_like(parameter))
        second = objective(batch["image"], batch["label"], batch["id"], batch["padding"])
    assert first.cbs > 0 and first.otm != second.otm
    assert (first.cbs == second.cbs) == (features == "raw")


# select_prompts.cam


def test_multiscale_selection_masks_with_make_cams_maps(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    net = CamNet("resnet18", 3, "random").eval()
    rgb = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    for preset in ("paper", "demo"):
        config = resolve_config(preset, {"select_prompts": {"cam": "multiscale"}})
        make = config.make_cams
        precision = cam_precision(config, torch.device("cpu"))
        ((expected, _),) = multiscale_cams(net, [rgb], [[1, 3]], make.scales, make.flip, precision)
        assert torch.equal(tag_cams(net, rgb, [1, 3], config), expected)
    single = tag_cams(net, rgb, [1, 3], resolve_config("paper", {"select_prompts": {"cam": "single"}}))
    assert single.shape == expected.shape and not torch.allclose(single, expected)
    assert torch.equal(single, torch.nn.functional.relu(single)) and single.amax() <= 1

    ctx = stage_context(tiny_dataset, tmp_path, "select_prompts", select_prompts={"cam": "multiscale"})
    select_prompts.run(ctx)
    record = json.loads((tmp_path / "select_prompts" / STAGE_RECORD).read_text())
    assert record["cams"] == {"scales": list(ctx.config.make_cams.scales), "flip": True}
    assert record["config"]["cam"] == "multiscale"


def test_unknown_fill_is_refused():
    with pytest.raises(ValueError, match="unknown CLIP fill 'white'"):
        masked_for_clip(torch.rand(1, 3, 4, 4), torch.ones(1, 1, 4, 4), "white")


def test_selection_pixels_are_float_rgb_in_the_unit_range():
    x01 = to_tensor01(np.full((8, 8, 3), 255, np.uint8))
    masked = masked_images(x01, torch.ones(1, 8, 8), (4, 4), "mean")
    assert torch.allclose(masked, torch.ones_like(masked))
