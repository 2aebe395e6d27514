"""The one rule of which weights a run loads (ml.spec.weight_tags), read by the pipeline and the API alike."""

from __future__ import annotations

from ml.spec.config import resolve_config
from ml.spec.registry import stages_for
from ml.spec.weight_tags import BACKBONE, CLIP, WeightNeed, holds, weights_needed


def needed(preset: str, overrides: dict | None = None, stages: list[str] | None = None) -> list[tuple[str, str]]:
    config = resolve_config(preset, overrides)
    return [(n.weights_setting, n.weights) for n in weights_needed(config, stages or stages_for(config))]


def test_the_enabled_stages_decide_which_weights_are_needed():
    assert needed("paper") == [
        ("models.cam_weights", "imagenet"),
        ("models.clip_pretrained", "openai"),
        ("models.irn_weights", "imagenet"),
        ("models.seg_weights", "imagenet"),
    ]
    # The CAM baseline: no train_pole, hence no select_prompts, hence no CLIP.
    assert needed("paper", {"train_pole": {"enabled": False}, "train_seg": {"enabled": False}}) == [
        ("models.cam_weights", "imagenet"),
        ("models.irn_weights", "imagenet"),
    ]
    # "cam": train_irn reuses the run's own CAM network.
    assert needed("cpu-small") == [("models.cam_weights", "random"), ("models.clip_pretrained", "pole-world")]
    # A resumed run loads only what its pending stages load.
    assert needed("paper", stages=["train_irn", "refine"]) == [("models.irn_weights", "imagenet")]


def test_the_segmenter_needs_the_weights_of_the_classifier_its_backbone_is():
    config = resolve_config("paper", {"models": {"seg_arch": "lraspp_mobilenet_v3_large"}})
    (need,) = weights_needed(config, ["train_seg", "eval_seg"])
    assert (need.kind, need.model, need.weights) == (BACKBONE, "mobilenet_v3_large", "imagenet")
    assert need.weights_setting == "models.seg_weights" and need.model_setting.startswith("models.seg_arch")
    assert holds({BACKBONE: [["mobilenet_v3_large", "imagenet"]]}, need)
    assert not holds({BACKBONE: [["lraspp_mobilenet_v3_large", "imagenet"]]}, need)
    assert weights_needed(config, ["eval_seg"]) == []  # evaluation loads the run's own checkpoint


def test_a_tag_must_be_advertised_while_random_and_files_need_no_advertisement():
    advertised = {CLIP: [["pole-tiny", "pole-world"]], BACKBONE: [["resnet50", "imagenet"]]}
    backbone = "models.cam_backbone", "models.cam_weights"
    assert holds(advertised, WeightNeed(BACKBONE, backbone[0], "resnet50", backbone[1], "imagenet"))
    assert not holds(advertised, WeightNeed(BACKBONE, backbone[0], "resnet101", backbone[1], "imagenet"))
    assert not holds({}, WeightNeed(CLIP, "models.clip_model", "ViT-B-32", "models.clip_pretrained", "openai"))
    assert holds({}, WeightNeed(CLIP, "models.clip_model", "ViT-B-32", "models.clip_pretrained", "random"))
    assert holds({}, WeightNeed(BACKBONE, backbone[0], "resnet50", backbone[1], "/srv/weights/r50.pth"))
