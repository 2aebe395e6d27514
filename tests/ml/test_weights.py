import time

import huggingface_hub.constants
import open_clip
import pytest
import torch

from ml.models.clip_encoder import FrozenClip
from ml.spec.registry import SEGMENTER_BACKBONES
from ml.weights import WeightsError, held_weight_tags, resolve_backbone, resolve_clip


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network allowed and empty weight caches: only what a test puts on disk exists."""
    monkeypatch.setenv("POLE_OFFLINE", "1")
    monkeypatch.setenv("POLE_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_offline_clip_tag_not_on_disk_fails_fast_naming_the_setting(offline):
    started = time.monotonic()
    with pytest.raises(WeightsError) as err:
        FrozenClip("ViT-B-32", "openai")
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "POLE_OFFLINE=1" in message and "models.clip_pretrained" in message and "POLE_WEIGHTS_DIR" in message


def test_offline_backbone_not_on_disk_fails_fast_naming_the_setting(offline):
    started = time.monotonic()
    with pytest.raises(WeightsError, match=r"models\.cam_weights.*POLE_WEIGHTS_DIR"):
        resolve_backbone("resnet50", "imagenet")
    assert time.monotonic() - started < 5


def test_bogus_clip_tag_or_missing_file_lists_the_choices(offline):
    started = time.monotonic()
    with pytest.raises(WeightsError, match=r"models\.clip_pretrained='no-such-tag'.*tags: .*openai"):
        resolve_clip("ViT-B-32", "no-such-tag")
    with pytest.raises(WeightsError, match="models.clip_pretrained: weight file /nonexistent/clip.pt not found"):
        resolve_clip("ViT-B-32", "/nonexistent/clip.pt")
    with pytest.raises(WeightsError, match="not an open_clip model; available: .*ViT-B-32"):
        resolve_clip("ViT-Q-99", "openai")
    with pytest.raises(WeightsError, match="models.cam_weights / models.irn_weights / models.seg_weights: weight file"):
        resolve_backbone("resnet18", "/nonexistent/resnet.pth")
    with pytest.raises(WeightsError, match="use 'imagenet', a local .pth file, or 'random'"):
        resolve_backbone("resnet18", "imagenet21k")
    assert time.monotonic() - started < 5


def test_clip_loads_from_a_local_checkpoint_file(offline, tmp_path):
    torch.manual_seed(1)
    source = open_clip.create_model("pole-tiny")
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    clip = FrozenClip("pole-tiny", str(path))
    assert clip.weights.source == str(path) and len(clip.weights.sha256) == 64
    for name, value in source.state_dict().items():
        assert torch.equal(clip.model.state_dict()[name], value), name


def test_random_weights_are_explicit_and_recorded(offline):
    clip = FrozenClip("pole-tiny", "random")
    assert clip.weights.record() == {"name": "pole-tiny", "source": "random", "path": None, "sha256": None}


def test_a_worker_holds_the_shipped_clip_and_the_named_tags_whose_files_it_has(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "huggingface"))
    assert held_weight_tags() == {"clip": [["pole-tiny", "pole-world"]], "backbone": []}

    # Named the way the resolvers look them up in POLE_WEIGHTS_DIR; empty, since only their presence counts.
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "ViT-B-32-openai.pt").touch()
    (weights / "resnet50-0676ba61.pth").touch()  # torchvision's IMAGENET1K_V1 file of resnet50
    assert held_weight_tags() == {
        "clip": [["ViT-B-32", "openai"], ["pole-tiny", "pole-world"]],
        "backbone": [["resnet50", "imagenet"]],
    }
    # What a worker advertises is what it resolves without a network.
    assert resolve_clip("ViT-B-32", "openai").path == weights / "ViT-B-32-openai.pt"
    assert resolve_backbone("resnet50", "imagenet").path == weights / "resnet50-0676ba61.pth"


def test_a_worker_holds_the_segmenter_backbones_whose_imagenet_files_it_has(offline, tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "huggingface"))
    weights = tmp_path / "weights"
    weights.mkdir()
    files = {  # torchvision's IMAGENET1K_V1 files, as models.seg_weights="imagenet" resolves them
        "mobilenet_v3_large": "mobilenet_v3_large-8738ca79.pth",
        "resnet50": "resnet50-0676ba61.pth",
        "resnet101": "resnet101-63fe2227.pth",
    }
    assert set(files) == set(SEGMENTER_BACKBONES.values())
    for name in files.values():
        (weights / name).touch()
    assert held_weight_tags()["backbone"] == [[name, "imagenet"] for name in sorted(files)]
    for backbone, name in files.items():
        assert resolve_backbone(backbone, "imagenet").path == weights / name
