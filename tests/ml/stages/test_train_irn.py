import json

import numpy as np
import pytest
import torch
from PIL import Image

from ml.data import Dataset, ImageRecord
from ml.data.palette import save_mask_png
from ml.models.cam_net import CamNet, save_cam_net
from ml.models.irn import EdgeNet, affinity_loss, displacements, load_edge_net, pair_labels, save_edge_net
from ml.runtime import StageContext
from ml.spec.config import ConfigError, config_to_dict, resolve_config
from ml.stages import train_irn
from ml.stages.train_irn import seed_crop, stride4_labels, train_step
from ml.training import TrainingDiverged


def _as_set(mask: torch.Tensor) -> set[tuple[tuple[int, int], int, int]]:
    offsets = displacements(2)
    return {(offsets[d], y, x) for _, d, y, x in mask.nonzero().tolist()}


def test_pair_labels_by_hand():
    labels = torch.tensor([[[0, 0, 1], [255, 1, 1]]])
    background, foreground, cross = pair_labels(labels, radius=2)  # pairs (0,1) (1,-1) (1,0) (1,1)
    assert _as_set(background) == {((0, 1), 0, 0)}
    assert _as_set(foreground) == {((0, 1), 1, 1), ((1, -1), 0, 2), ((1, 0), 0, 2)}
    assert _as_set(cross) == {((0, 1), 0, 1), ((1, 0), 0, 1), ((1, 1), 0, 0), ((1, 1), 0, 1)}


def test_loss_is_small_for_right_affinities_and_large_for_wrong_ones():
    labels = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 1]]])
    background, foreground, cross = pair_labels(labels, radius=3)
    right = (background | foreground).float()
    right_loss, _ = affinity_loss(right, labels, radius=3)
    wrong_loss, parts = affinity_loss(1 - right, labels, radius=3)
    assert right_loss < 1e-3 and wrong_loss > 5
    assert set(parts) == {"background", "foreground", "cross"}


def test_boundary_map_is_at_stride_four_for_any_size():
    net = EdgeNet("resnet18").eval()
    with torch.no_grad():
        assert net(torch.randn(2, 3, 37, 50)).shape == (2, 10, 13)
        boundary = net.boundary(torch.randn(3, 64, 40))
    assert boundary.shape == (16, 10) and (boundary > 0).all() and (boundary < 1).all()


def _toy_batch(count: int = 2, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with a bright square on dark ground; seeds mark the square's class and the ground."""
    images = torch.full((count, 3, size, size), -1.0)
    seeds = torch.zeros(count, size // 4, size // 4, dtype=torch.long)
    for i in range(count):
        lo = 4 + 4 * i
        images[i, :, lo * 4 : (lo + 6) * 4, lo * 4 : (lo + 6) * 4] = 1.5
        seeds[i, lo : lo + 6, lo : lo + 6] = 1 + i
        seeds[i, lo - 1, lo - 1 : lo + 7] = 255
    return images, seeds


def test_train_steps_reduce_the_loss_and_leave_the_backbone_frozen():
    torch.manual_seed(0)
    net = EdgeNet("resnet18").train()
    frozen = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    images, seeds = _toy_batch()
    optimizer = torch.optim.SGD(net.trainable_parameters(), lr=0.1, momentum=0.9)
    first, _ = train_step(net, images, seeds, radius=10, device=torch.device("cpu"))
    loss = first
    for _ in range(5):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss, _ = train_step(net, images, seeds, radius=10, device=torch.device("cpu"))
    assert loss < first * 0.9
    assert all(torch.equal(v, net.backbone.state_dict()[k]) for k, v in frozen.items())
    assert not any(p.requires_grad for p in net.backbone.parameters())


def test_checkpoint_rebuilds_the_same_network(tmp_path):
    net = EdgeNet("resnet18").eval()
    torch.nn.init.normal_(net.fuse.weight)
    save_edge_net(tmp_path / "model.pt", net, {"seed": 3})
    loaded, checkpoint = load_edge_net(tmp_path / "model.pt")
    assert checkpoint["model_args"] == {"backbone": "resnet18"} and checkpoint["config"] == {"seed": 3}
    x = torch.randn(3, 40, 44)
    with torch.no_grad():
        torch.testing.assert_close(loaded.boundary(x), net.boundary(x))


def test_crops_keep_image_and_seeds_aligned():
    image = np.zeros((50, 70, 3), np.uint8)
    image[:, 35:] = 255
    seeds = np.zeros((50, 70), np.uint8)
    seeds[:, 35:] = 2
    for seed in range(5):
        crop, crop_seeds = seed_crop(image, seeds, 64, (0.5, 1.5), np.random.default_rng(seed))
        assert crop.shape == (64, 64, 3) and crop_seeds.shape == (16, 16)
        centres = crop[2::4, 2::4].mean(axis=2)  # the pixels the stride-4 seeds were taken from
        # white is 1, black 0, padding the ImageNet mean (about 0.45); the resized edge lies between
        white, black = (centres > 0.9) & (crop_seeds != 255), (centres < 0.1) & (crop_seeds != 255)
        assert (crop_seeds[white] == 2).all() and (crop_seeds[black] == 0).all()
        assert white.sum() + black.sum() >= 0.5 * (crop_seeds != 255).sum()
    np.testing.assert_array_equal(stride4_labels(np.arange(9 * 6).reshape(9, 6)), [[14, 17], [38, 41], [50, 53]])


def _run_dir(tmp_path, config):
    root, run = tmp_path / "data", tmp_path / "run"
    (root / "images").mkdir(parents=True)
    (run / "make_seeds").mkdir(parents=True)
    (run / "train_pole").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "images" / f"im{i}.png")
        seeds = np.zeros((40, 48), np.uint8)
        seeds[10:30, 10:30] = 1
        seeds[8:10, 8:32] = 255
        save_mask_png(seeds, run / "make_seeds" / f"im{i}.png")
        records.append(ImageRecord(f"im{i}", root / "images" / f"im{i}.png", (1,)))
    cam_net = CamNet("resnet18", 2)
    save_cam_net(run / "train_pole" / "model.pt", cam_net, config_to_dict(config))
    return Dataset(root, "manifest", ["a", "b"], records), run, cam_net


def test_stage_reuses_the_cam_backbone_and_says_so(tmp_path):
    config = resolve_config("cpu-small", {"train_irn": {"epochs": 1, "batch_size": 2, "crop_size": 32}})
    dataset, run, cam_net = _run_dir(tmp_path, config)
    train_irn.run(StageContext(dataset, run, config, stage="train_irn"))
    net, checkpoint = load_edge_net(run / "train_irn" / "model.pt")
    for key, value in cam_net.backbone.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[key], value)
    assert checkpoint["config"] == config_to_dict(config) and checkpoint["frozen_backbone"]["source"] == "cam"
    record = json.loads((run / "train_irn" / "stage.json").read_text())
    assert record["weights"]["irn_backbone"]["checkpoint"] == "train_pole/model.pt"
    assert record["images"] == 3 and len(json.loads((run / "train_irn" / "log.json").read_text())) == 1


def test_cam_backbone_must_match_the_configured_one(tmp_path):
    config = resolve_config("cpu-small", {"models": {"irn_backbone": "resnet34"}})
    dataset, run, _ = _run_dir(tmp_path, config)
    with pytest.raises(ConfigError, match="irn_backbone to 'resnet18'"):
        train_irn.run(StageContext(dataset, run, config, stage="train_irn"))


def test_a_backbone_whose_features_overflow_stops_the_stage_with_a_reason(tmp_path):
    # What a CAM network wrecked by a diverged train_pole looks like: features past float32's range.
    config = resolve_config("cpu-small", {"train_irn": {"epochs": 1, "batch_size": 2, "crop_size": 32}})
    dataset, run, cam_net = _run_dir(tmp_path, config)
    with torch.no_grad():
        for module in cam_net.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.mul_(1e4)
    save_cam_net(run / "train_pole" / "model.pt", cam_net, config_to_dict(config))
    with pytest.raises(TrainingDiverged, match=r"train_irn: the loss is nan at epoch 1, step 1; .*max_grad_norm"):
        train_irn.run(StageContext(dataset, run, config, stage="train_irn"))
    assert not (run / "train_irn").exists()
