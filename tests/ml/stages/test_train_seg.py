"""train_seg and eval_seg on a hand-made run whose earlier stages count as done: the tiny dataset's
ground truth stands in for the final pseudo masks."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torchvision

from ml.data import load_dataset
from ml.data.images import read_image, read_mask
from ml.data.palette import IGNORE, save_mask_png
from ml.health_checks import floor_warning
from ml.models.segmenter import load_segmenter, predict_masks
from ml.pipeline import run_pipeline
from ml.runtime import Cancelled, StageContext, write_json
from ml.spec.config import resolve_config
from ml.spec.layout import RunLayout
from ml.spec.registry import final_masks_stage, stages_for
from ml.stages import eval_seg, train_seg
from ml.stages.train_seg import segmentation_loss

# A small network on small crops: about a second of training on two cores.
TINY_SEG = {
    "train_split": "train",
    "models": {"seg_arch": "lraspp_mobilenet_v3_large", "seg_weights": "random"},
    "train_seg": {"enabled": True, "epochs": 1, "batch_size": 4, "augment": {"resize_long": [48, 64], "crop_size": 48}},
}


def finished_run(tiny_dataset, out, extra: dict | None = None):
    """(dataset, config) of a run in `out` whose stages before train_seg count as done: every third
    image held out as "val", one image untagged with an all-background mask, one whose pseudo mask
    is all 255 (nothing to learn from), the others with their ground truth as pseudo masks."""
    dataset = load_dataset(tiny_dataset)
    config = resolve_config("cpu-small", TINY_SEG, extra)
    masks = RunLayout(out).stage_dir(final_masks_stage(config))
    masks.mkdir(parents=True)
    images = []
    for index, record in enumerate(dataset.images):
        mask = read_mask(record.mask)
        if index == 1:
            record, mask = dataclasses.replace(record, tags=()), np.zeros_like(mask)
        elif index == 2:
            mask = np.full_like(mask, IGNORE)
        images.append(dataclasses.replace(record, split="val" if index % 3 == 0 else "train"))
        save_mask_png(mask, masks / f"{record.id}.png")
    for stage in stages_for(config)[: stages_for(config).index("train_seg")]:
        (out / stage).mkdir(exist_ok=True)
    write_json(RunLayout(out).preflight, {"warnings": []})
    return dataclasses.replace(dataset, images=images), config


def test_ignored_pixels_add_nothing_to_the_loss():
    torch.manual_seed(0)
    masks = torch.randint(0, 4, (2, 8, 8))
    masks[0, :3] = IGNORE
    masks[1, :, 5:] = IGNORE
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss = segmentation_loss(logits, masks)
    loss.backward()
    ignored = (masks == IGNORE).unsqueeze(1).expand_as(logits)
    assert (logits.grad[ignored] == 0).all() and (logits.grad[~ignored] != 0).any()
    changed = torch.where(ignored, torch.randn_like(logits) * 100, logits.detach())
    assert segmentation_loss(changed, masks) == loss
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, masks, ignore_index=IGNORE))
    nothing_labelled = segmentation_loss(logits, torch.full_like(masks, IGNORE))
    assert nothing_labelled == 0 and torch.isfinite(nothing_labelled)


def test_train_then_eval_on_a_tiny_run(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    dataset, config = finished_run(tiny_dataset, out)
    train_seg.run(StageContext(dataset, out, config, stage="train_seg"))

    record = json.loads((out / "train_seg" / "stage.json").read_text())
    assert record["images"] == 8 and record["masks"] == "refine" and record["train_split"] == "train"
    assert record["weights"]["seg_backbone"]["source"] == "random"
    steps = json.loads((out / "train_seg" / "log.json").read_text())["steps"]
    assert len(steps) == 2 and all(np.isfinite(step["loss"]) for step in steps)  # 8 images, batches of 4

    model, checkpoint = load_segmenter(out / "train_seg" / "model.pt")
    assert record["checkpoints"]["model.pt"] and checkpoint["num_classes"] == 4
    assert checkpoint["classes"] == dataset.classes and checkpoint["config"]["train_seg"]["epochs"] == 1
    image = read_image(dataset.images[0].image)
    (prediction,) = predict_masks(model, checkpoint, [image])
    assert prediction.shape == image.shape[:2] and prediction.max() < 4
    # What the module docstring promises: torch and torchvision alone rebuild it.
    plain = torch.load(out / "train_seg" / "model.pt", weights_only=True)
    build = getattr(torchvision.models.segmentation, plain["arch"])
    rebuilt = build(weights=None, weights_backbone=None, num_classes=plain["num_classes"])
    rebuilt.load_state_dict(plain["state_dict"])

    eval_seg.run(StageContext(dataset, out, config, stage="eval_seg"))
    metrics = RunLayout(out).read_metrics("eval_seg")
    assert metrics["has_ground_truth"] and metrics["images"] == 12 and metrics["unscored"] == {}
    assert (metrics["train_split"], metrics["held_out_splits"]) == ("train", ["val"])
    assert set(metrics["iou"]) == {"background", *dataset.classes} and 0 <= metrics["miou"] <= 1
    assert {name: split["images"] for name, split in metrics["splits"].items()} == {"train": 8, "val": 4}
    assert metrics["background_only_miou"] is not None
    record = json.loads((out / "eval_seg" / "stage.json").read_text())
    assert record["held_out_splits"] == ["val"] and list(record["checkpoints"]) == ["train_seg/model.pt"]
    floor = floor_warning(metrics["miou"], metrics["background_only_miou"], "segmenter's masks")
    assert record["warnings"] == floor


def test_the_pipeline_resumes_past_a_finished_stage_and_a_cancel_leaves_no_half_stage(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    dataset, config = finished_run(tiny_dataset, out, {"train_seg": {"epochs": 2}})
    checks = iter(range(1000))
    with pytest.raises(Cancelled):  # checks: before the stage, then one per batch; the third batch asks
        run_pipeline(dataset, out, config, should_cancel=lambda: next(checks) >= 3, until="eval_seg")
    assert not (out / "train_seg").exists() and not RunLayout(out).partial_dir("train_seg").exists()

    progress = []
    summary = run_pipeline(dataset, out, config, on_progress=lambda *a: progress.append(a), until="eval_seg")
    assert list(summary["stage_seconds"]) == ["train_seg", "eval_seg"]
    assert summary["eval_seg"]["held_out_splits"] == ["val"] and "train_seg" in summary["provenance"]
    assert {stage for stage, fraction, _ in progress if fraction == 1.0} == {"train_seg", "eval_seg"}
    checkpoint = (out / "train_seg" / "model.pt").stat().st_mtime_ns
    again = run_pipeline(dataset, out, config, until="eval_seg")
    assert "stage_seconds" not in again and (out / "train_seg" / "model.pt").stat().st_mtime_ns == checkpoint


def test_one_training_image_is_refused_with_the_reason(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    dataset, config = finished_run(tiny_dataset, out)
    dataset = dataclasses.replace(dataset, images=dataset.images[:2])  # one "val", one "train"
    with pytest.raises(ValueError, match="2 training images or more"):
        train_seg.run(StageContext(dataset, out, config, stage="train_seg"))
