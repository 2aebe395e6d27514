"""Runs that finish but learned nothing are flagged: before training, in make_cams, select_prompts and evaluations."""

import numpy as np
import pytest
import torch

from ml.data import load_dataset
from ml.data.images import read_mask
from ml.health_checks import (
    MIN_IMAGES_PER_CLASS,
    CamHealth,
    floor_warning,
    selection_warnings,
    zero_shot_warnings,
)
from ml.metrics import SplitConfusion
from ml.models.cam_net import CamNet, save_cam_net
from ml.pipeline import run_pipeline
from ml.preflight import rank_auc, run_preflight
from ml.runtime import StageContext
from ml.spec.config import config_to_dict, resolve_config
from ml.spec.layout import RunLayout
from ml.stages import select_prompts
from tests.conftest import TINY_CLASSES, all_background_miou

FAST = {"train_irn": {"epochs": 1}, "refine": {"exp_times": 5}}


def rename_classes(root, names: dict[str, str]) -> None:
    """Give the tiny dataset other class words (its pictures stay the same)."""
    for file in ("classes.txt", "tags.csv"):
        text = (root / file).read_text()
        for old, new in names.items():
            text = text.replace(old, new)
        (root / file).write_text(text)


def checks(found: list[dict]) -> dict[str, dict]:
    return {item["check"]: item for item in found}


def test_preflight_flags_random_weights_a_clip_of_another_domain_and_few_images(tiny_dataset):
    rename_classes(tiny_dataset, dict(zip(TINY_CLASSES, ("dog", "person", "potted plant"), strict=True)))
    found = checks(run_preflight(load_dataset(tiny_dataset), resolve_config("cpu-small")))
    assert "models.cam_weights" in found["random_weights"]["message"]
    assert found["clip_domain"]["classes"] == ["dog", "person", "potted plant"]
    assert "pole-tiny/pole-world" in found["clip_domain"]["message"]
    assert found["few_images"]["classes"] == ["dog", "person", "potted plant"]  # 6 images each
    assert f"fewer than {MIN_IMAGES_PER_CLASS} images: dog (6)" in found["few_images"]["message"]


def test_preflight_knows_the_world_clip_knows_the_world_words(tiny_dataset):
    found = checks(run_preflight(load_dataset(tiny_dataset), resolve_config("cpu-small")))
    assert "clip_domain" not in found and "random_weights" in found


def test_zero_shot_auc_and_identical_prompts():
    assert rank_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert rank_auc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5
    similarity = np.array([[1.0, 0.995, 0.2], [0.995, 1.0, 0.1], [0.2, 0.1, 1.0]])
    found = checks(zero_shot_warnings({"a": 0.52, "b": 0.9, "c": 0.95}, similarity, ["a", "b", "c"]))
    assert (
        found["clip_cannot_tell_classes"]["classes"] == ["a"]
        and "a 0.52" in found["clip_cannot_tell_classes"]["message"]
    )
    assert found["clip_same_prompts"]["classes"] == ["a", "b"]


def test_cam_health_counts_empty_and_flat_maps_per_class():
    health = CamHealth(["cat", "dog"])
    for _ in range(3):
        health.add([1, 2], peaks=[0.0, 1.0], spreads=[0.0, 0.3])  # cat empty, dog a real map
    health.add([2], peaks=[1.0], spreads=[0.01])  # dog lit up everywhere alike
    assert health.record() == {"cat": {"maps": 3, "empty": 3, "flat": 0}, "dog": {"maps": 4, "empty": 0, "flat": 1}}
    (found,) = health.warnings()
    assert found["classes"] == ["cat"] and "cat (3 empty, 0 flat of 3)" in found["message"]


def test_selections_that_ignore_the_image_or_tie_are_flagged():
    row = {"candidates": ["cat", "kitty"], "chosen": "cat"}
    same_everywhere = [{**row, "class": "cat", "scores": [0.31, 0.29]} for _ in range(4)]
    tied = [{**row, "class": "dog", "scores": [0.2 + i / 10, 0.2 + i / 10]} for i in range(4)]
    varied = [{**row, "class": "cow", "scores": [0.3, 0.2 + i / 100]} for i in range(4)]
    found = checks(selection_warnings(same_everywhere + tied + varied))
    assert found["identical_scores"]["classes"] == ["cat"]
    assert found["indistinguishable_scores"]["classes"] == ["dog"]


def test_background_floor_is_in_the_metrics_and_warns_when_not_beaten(tiny_dataset):
    dataset = load_dataset(tiny_dataset)
    truths = [read_mask(record.mask) for record in dataset.images]
    confusion = SplitConfusion(dataset.num_classes + 1)
    for truth in truths:
        confusion.add("train", truth, np.zeros_like(truth))
    report = confusion.report(dataset.classes)
    assert report["background_only_miou"] == pytest.approx(all_background_miou(truths, dataset.classes))
    assert report["miou"] == pytest.approx(report["background_only_miou"])
    (found,) = floor_warning(report["miou"], report["background_only_miou"], "pseudo masks")
    assert found["check"] == "below_background_floor"
    assert floor_warning(report["miou"] + 0.01, report["background_only_miou"], "pseudo masks") == []


def test_a_network_that_lights_up_nothing_is_flagged_at_make_cams_and_select_prompts(tiny_dataset, tmp_path):
    """The run on photos that looked like a success: all-zero CAMs, then words chosen from identical scores."""
    dataset = load_dataset(tiny_dataset)
    synonyms = {"square": ["box"], "circle": ["ring"], "triangle": ["wedge"]}
    config = resolve_config("cpu-small", FAST, {"select_prompts": {"synonyms": synonyms, "num_synonyms": 1}})
    out = tmp_path / "run"
    torch.manual_seed(0)
    net = CamNet("resnet18", dataset.num_classes)
    torch.nn.init.zeros_(net.classifier.weight)  # relu(0 . features) = 0: every map empty
    for stage in ("train_cam", "train_pole"):
        (out / stage).mkdir(parents=True)
        save_cam_net(out / stage / "model.pt", net, config_to_dict(config))
    ctx = StageContext(dataset=dataset, out=out, config=config, stage="select_prompts")
    select_prompts.run(ctx)
    summary = run_pipeline(dataset, out, config, until="eval_cams")
    found = {(item["stage"], item["check"]): item for item in summary["warnings"]}
    assert found["make_cams", "empty_cams"]["classes"] == list(dataset.classes)
    assert found["select_prompts", "identical_scores"]["classes"] == list(dataset.classes)
    assert ("eval_cams", "below_background_floor") in found
    assert ("preflight", "random_weights") in found
    record = RunLayout(out).read_stage_warnings("make_cams")
    assert record[0]["stage"] == "make_cams"
