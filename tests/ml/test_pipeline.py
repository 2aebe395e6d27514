"""The stages after training, run through the pipeline from a hand-made CAM network checkpoint."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ml.cams
from ml.cams import multiscale_cams
from ml.data import load_dataset
from ml.data.images import read_image, read_mask
from ml.loaders import images_to_tensor01
from ml.models.backbone import imagenet_normalize
from ml.models.cam_net import CamNet, save_cam_net
from ml.pipeline import run_pipeline
from ml.runtime import Cancelled, StageContext
from ml.spec.config import config_to_dict, resolve_config
from ml.spec.layout import CONTACT_SHEET, WORDS_RADAR, RunLayout
from ml.stages import make_cams
from tests.conftest import all_background_miou

TRAINING_STAGES = ("train_cam", "select_prompts", "train_pole")
# Small enough for a few seconds on two cores; the cpu-small preset otherwise.
FAST = {"train_irn": {"epochs": 1}, "refine": {"exp_times": 5}}


def trained_run(out, config, num_classes: int = 3, stage: str = "train_pole") -> CamNet:
    """A run directory whose training stages count as done, with a random CAM network as their result."""
    for name in TRAINING_STAGES:
        (out / name).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = CamNet("resnet18", num_classes)
    save_cam_net(out / stage / "model.pt", net, config_to_dict(config))
    return net


def one_pass_at_a_time(net: CamNet, image: np.ndarray, keys, scales) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: every scale and every flip of one image as its own forward pass."""
    height, width = image.shape[:2]
    x = imagenet_normalize(images_to_tensor01([image], torch.device("cpu")))
    index = torch.as_tensor(keys) - 1
    full = torch.zeros(len(keys), height, width)
    strided = torch.zeros(len(keys), (height + 3) // 4, (width + 3) // 4)
    with torch.no_grad():
        for scale in scales:
            scaled = F.interpolate(x, (round(height * scale), round(width * scale)), mode="bilinear")
            for flipped in (False, True):
                cams = net.cams(scaled.flip(-1) if flipped else scaled)
                cams = (cams.flip(-1) if flipped else cams)[:, index]
                full += F.interpolate(cams, (height, width), mode="bilinear", align_corners=False)[0]
                strided += F.interpolate(cams, strided.shape[1:], mode="bilinear", align_corners=False)[0]
    return tuple(m / (m.flatten(1).amax(1).view(-1, 1, 1) + 1e-5) for m in (full, strided))


@pytest.mark.parametrize("pass_pixels", [ml.cams.CPU_PASS_PIXELS, 3000])  # 3000: larger scales split
def test_batched_cams_equal_one_pass_at_a_time(monkeypatch, pass_pixels):
    monkeypatch.setattr(ml.cams, "CPU_PASS_PIXELS", pass_pixels)
    torch.manual_seed(0)
    net = CamNet("resnet18", 4).eval()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (45, 62, 3), dtype=np.uint8) for _ in range(2)]
    keys = [(1, 3), (4,)]
    scales = (1.0, 0.5, 1.5)
    batched = multiscale_cams(net, images, keys, scales, flip=True)
    for image, tags, (full, strided) in zip(images, keys, batched, strict=True):
        ref_full, ref_strided = one_pass_at_a_time(net, image, tags, scales)
        assert full.shape == (len(tags), 45, 62) and strided.shape == (len(tags), 12, 16)
        torch.testing.assert_close(full, ref_full, atol=1e-4, rtol=0)
        torch.testing.assert_close(strided, ref_strided, atol=1e-4, rtol=0)


def test_folding_batchnorm_keeps_the_maps_and_leaves_no_batchnorm():
    torch.manual_seed(0)
    net = CamNet("resnet18", 3).eval()
    for module in net.modules():  # statistics far from the identity, so a wrong fold shows
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    image = np.random.default_rng(1).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    before = multiscale_cams(net, [image], [(1, 2, 3)], (1.0, 0.5), flip=True)[0]
    make_cams.fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    after = multiscale_cams(net, [image], [(1, 2, 3)], (1.0, 0.5), flip=True)[0]
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_make_cams_writes_normalised_maps_of_the_tagged_classes(tiny_dataset, tmp_path):
    dataset = load_dataset(tiny_dataset)
    config = resolve_config("cpu-small")
    out = tmp_path / "run"
    trained_run(out, config)
    make_cams.run(StageContext(dataset, out, config, stage="make_cams"))
    for record in dataset.images:
        cams = RunLayout(out).read_cams(record.id)
        height, width = read_image(record.image).shape[:2]
        assert cams.keys.tolist() == list(record.tags)
        assert cams.cam.shape == (len(record.tags), height, width)
        assert cams.cam_s4.shape == (len(record.tags), -(-height // 4), -(-width // 4))
        with np.load(RunLayout(out).cams(record.id)) as raw:
            assert raw["cam"].dtype == np.float16 and raw["cam_s4"].dtype == np.float16
        peaks = cams.cam.reshape(len(record.tags), -1).max(axis=1)
        assert (cams.cam >= 0).all() and np.all((peaks > 0.99) & (peaks <= 1.0))
    record = json.loads((out / "make_cams" / "stage.json").read_text())
    assert record["images"] == len(dataset.images) and "train_pole/model.pt" in record["checkpoints"]


def test_baseline_method_takes_the_train_cam_network(tiny_dataset, tmp_path):
    dataset = load_dataset(tiny_dataset)
    config = resolve_config("cpu-small", {"train_pole": {"enabled": False}})
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="train_cam stage first"):
        make_cams.run(StageContext(dataset, out, config, stage="make_cams"))
    trained_run(out, config, stage="train_cam")
    make_cams.run(StageContext(dataset, out, config, stage="make_cams"))
    assert "train_cam/model.pt" in json.loads((out / "make_cams" / "stage.json").read_text())["checkpoints"]


def test_stages_after_training_produce_scored_masks_and_an_archive(tiny_dataset, tmp_path):
    dataset = load_dataset(tiny_dataset)
    config = resolve_config("cpu-small", FAST, {"crf": {"enabled": True}})
    out = tmp_path / "run"
    trained_run(out, config)
    seen = []
    summary = run_pipeline(dataset, out, config, on_progress=lambda stage, f, msg: seen.append(stage))
    for stage in ("make_cams", "eval_cams", "make_seeds", "train_irn", "refine", "crf", "eval_masks", "export"):
        assert (out / stage / "stage.json").is_file() and stage in seen
    for record in dataset.images:
        for stage in ("refine", "crf"):
            values = set(np.unique(read_mask(out / stage / f"{record.id}.png")).tolist())
            assert values <= {0, *record.tags}
        seeds = set(np.unique(read_mask(out / "make_seeds" / f"{record.id}.png")).tolist())
        assert seeds <= {0, 255, *record.tags}
    for stage in ("eval_cams", "eval_masks"):
        metrics = summary[stage]
        assert metrics["has_ground_truth"] and 0 <= metrics["miou"] <= 1
        assert set(metrics["iou"]) == {"background", *dataset.classes}
    assert summary["eval_cams"]["threshold"] == 0.15 and len(summary["eval_cams"]["sweep"]["thresholds"]) == 15
    with zipfile.ZipFile(RunLayout(out).archive("cvat")) as zf:
        names = set(zf.namelist())
    assert {"labelmap.txt", "ImageSets/Segmentation/default.txt", "selections.csv", "metrics.json"} <= names
    assert {f"SegmentationClass/{r.id}.png" for r in dataset.images} <= names


def test_metrics_say_when_there_is_no_ground_truth(tiny_dataset, tmp_path):
    for mask in (tiny_dataset / "masks").iterdir():
        mask.unlink()
    (tiny_dataset / "masks").rmdir()
    dataset = load_dataset(tiny_dataset)
    config = resolve_config("cpu-small")
    out = tmp_path / "run"
    trained_run(out, config)
    summary = run_pipeline(dataset, out, config, until="eval_cams")
    assert summary["eval_cams"] == {"has_ground_truth": False, "miou": None}


def test_cancel_between_batches_leaves_no_half_stage_and_resume_finishes(tiny_dataset, tmp_path):
    dataset = load_dataset(tiny_dataset)
    config = resolve_config("cpu-small")
    out = tmp_path / "run"
    trained_run(out, config)
    checks = []

    def cancel_on_second_batch() -> bool:
        checks.append(1)
        return len(checks) > 2  # the pipeline's own check, then make_cams' first batch, then stop

    with pytest.raises(Cancelled):
        run_pipeline(dataset, out, config, should_cancel=cancel_on_second_batch, until="make_cams")
    assert not (out / "make_cams").exists()
    run_pipeline(dataset, out, config, until="make_cams")
    assert len(list((out / "make_cams").glob("*.npz"))) == len(dataset.images)


def _pole(argv: list[str]) -> int:
    from pole.cli import main

    return main(argv)


def _check_export(out, dataset) -> None:
    """A mask for every image, values in {0..K, 255}, and the CVAT layout in folder and archive."""
    masks = RunLayout(out).export_dir("cvat")
    ids = [record.id for record in dataset.images]
    assert (masks / "ImageSets" / "Segmentation" / "default.txt").read_text().split() == ids
    allowed = set(range(dataset.num_classes + 1)) | {255}
    for image_id in ids:
        assert set(np.unique(read_mask(masks / "SegmentationClass" / f"{image_id}.png")).tolist()) <= allowed
    with zipfile.ZipFile(RunLayout(out).archive("cvat")) as zf:
        names = set(zf.namelist())
    on_disk = {p.relative_to(masks).as_posix() for p in masks.rglob("*") if p.is_file()}
    assert names == on_disk
    assert {"labelmap.txt", "selections.csv", "metrics.json", "config.json"} <= names
    assert len((masks / "selections.csv").read_text().splitlines()) > 1  # the POLE selection ran


def test_pole_run_cpu_small_end_to_end(tiny_dataset, tmp_path, capsys):
    small = {"resize_long": [48, 80], "crop_size": 64}
    fast = {
        "train_cam": {"epochs": 1, "batch_size": 4, "augment": small},
        "select_prompts": {"batch_size": 6, "num_synonyms": 1, "synonyms": {"square": ["box"], "circle": ["ring"]}},
        "train_pole": {"epochs": 1, "batch_size": 6, "augment": small},
        **FAST,
    }
    (tmp_path / "fast.json").write_text(json.dumps(fast))
    out = tmp_path / "out"
    argv = [
        "run",
        str(tiny_dataset),
        "--out",
        str(out),
        "--preset",
        "cpu-small",
        "--config",
        str(tmp_path / "fast.json"),
    ]
    # In a process of its own, whose logging is set up as on a terminal (pytest installs handlers of its own).
    first = subprocess.run([sys.executable, "-m", "pole.cli", *argv], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    dataset = load_dataset(tiny_dataset)
    _check_export(out, dataset)
    _check_report(first.stdout, out, dataset)
    assert "INFO" not in first.stderr
    assert "train_cam finished in" in first.stderr and "100%|" in first.stderr  # stage lines and the bar
    assert _pole(argv) == 0  # a finished run resumes to a no-op
    assert "already done: train_cam, select_prompts" in capsys.readouterr().err


def _check_report(printed: str, out, dataset) -> None:
    """The end of `pole run`: the archive, IoU per class, the all-background floor, the chosen words
    and the figures."""
    archive = RunLayout(out).archive("cvat")
    assert f"archive: {archive}" in printed.splitlines() and archive.is_file()
    for label in ("mIoU", "background", *dataset.classes):  # one row each, a CAM and a mask column
        assert re.search(rf"^{label} +\d+\.\d% +\d+\.\d%$", printed, re.MULTILINE), label
    floor = all_background_miou([read_mask(r.mask) for r in dataset.images], dataset.classes)
    assert f"calling every pixel background scores {100 * floor:.1f}% mIoU" in printed
    assert "words chosen for each class" in printed and "time per stage" in printed
    listed = printed.split("\nfigures:\n")[1].split("\n\n")[0].splitlines()
    figures = [Path(line.strip()) for line in listed]
    assert {path.parent for path in figures} == {RunLayout(out).figures}
    names = {path.name for path in figures}
    assert {CONTACT_SHEET, WORDS_RADAR} <= names and any(name.startswith("cams_") for name in names)
    for path in figures:
        with Image.open(path) as figure:
            assert figure.format == "PNG" and figure.width > 0 and figure.height > 0, path


def make_shapes_dataset(root, count: int, size: int, seed: int = 0):
    """A manifest dataset of `count` noisy images of about size x size px with one or two coloured shapes."""
    from PIL import Image, ImageDraw

    classes = ("square", "circle", "triangle")
    colours = ((220, 40, 40), (40, 200, 60), (50, 70, 230))
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    rows = ["image,tags"]
    for index in range(count):
        width, height = (int(v) for v in rng.integers(size - 16, size + 17, size=2))
        image = Image.fromarray(rng.integers(90, 150, (height, width, 3), dtype=np.uint8))
        mask = Image.new("L", (width, height), 0)
        tags = sorted(rng.choice(3, size=1 + index % 2, replace=False).tolist())
        for slot, label in enumerate(tags):
            left = slot * width // len(tags)
            side = int(rng.integers(height // 4, min(width // len(tags), height) - 6))
            x0, y0 = left + int(rng.integers(2, width // len(tags) - side - 2)), int(rng.integers(2, height - side - 2))
            box = (x0, y0, x0 + side, y0 + side)
            for draw, fill in ((ImageDraw.Draw(image), colours[label]), (ImageDraw.Draw(mask), label + 1)):
                if label == 0:
                    draw.rectangle(box, fill=fill)
                elif label == 1:
                    draw.ellipse(box, fill=fill)
                else:
                    draw.polygon([((box[0] + box[2]) // 2, box[1]), box[2:], (box[0], box[3])], fill=fill)
        image.save(root / "images" / f"s{index:02d}.png")
        mask.save(root / "masks" / f"s{index:02d}.png")
        rows.append(f"s{index:02d}.png,{'|'.join(classes[t] for t in tags)}")
    (root / "tags.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.mark.slow
def test_cpu_small_preset_takes_24_images_through_every_stage_in_5_minutes(tmp_path):
    import time

    dataset_root = make_shapes_dataset(tmp_path / "shapes", count=24, size=128)
    out = tmp_path / "out"
    started = time.monotonic()
    assert _pole(["run", str(dataset_root), "--out", str(out), "--preset", "cpu-small"]) == 0
    elapsed = time.monotonic() - started
    _check_export(out, load_dataset(dataset_root))
    assert elapsed < 300, f"cpu-small took {elapsed:.0f} s for 24 images"
