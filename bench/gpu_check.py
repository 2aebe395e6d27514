"""The `paper` preset at real sizes on one GPU: time, throughput and memory of every stage.

    .venv/bin/python bench/gpu_check.py [--images 100] [--epochs 1] [--out bench-output/gpu-check]
    .venv/bin/python bench/gpu_check.py --device cpu --images 2   # smoke run of the script itself

Generated VOC-sized images (500x375 JPEGs in the VOC layout, shapes of VOC classes with their
ground-truth masks) go through every stage of `paper`: ResNet-50 CAM and IRNet networks, CLIP
ViT-B-32, 512 px crops, the paper's batch sizes and multi-scale, flipped CAMs. Only two things
differ from a real run: every network starts from random weights (nothing is downloaded) and the
training stages run `--epochs` passes over the images. Prints per stage its seconds, images per
second (training stages count every pass) and the peak GPU memory that stage allocated and
reserved; then how far make_cams' maps at the precision it ran at (`precision: auto`: float16
autocast on CUDA) are from float32 maps of the same network on the same images. Writes the figures
to OUT/gpu_check.json. Without CUDA it stops with an error unless `--device cpu` is given (a smoke
run: there `auto` is bfloat16 on a CPU with bfloat16 instructions, else float32 against itself).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ml.cams import cam_precision, multiscale_cams
from ml.data import Dataset, load_dataset
from ml.data.images import read_image
from ml.data.layouts.voc import VOC_CLASSES
from ml.data.palette import IGNORE, save_mask_png
from ml.device import FLOAT32
from ml.metrics import cam_labels
from ml.models.cam_net import load_cam_net
from ml.pipeline import run_pipeline
from ml.spec.config import PipelineConfig, resolve_config
from ml.spec.layout import RunLayout
from ml.spec.registry import final_cam_stage
from ml.stages.make_cams import fold_batchnorm

VOC_SIZE = (500, 375)  # width, height: VOC2012's most common image size
TRAINING_STAGES = ("train_cam", "train_pole", "train_irn", "train_seg")
GIB = 2**30


def write_voc_images(root: Path, count: int, seed: int = 0) -> Path:
    """A VOC-layout dataset of `count` 500x375 JPEGs: a noisy grey ramp with one to three shapes of
    VOC classes side by side, SegmentationClass masks with a 255 outline around every shape (as VOC
    draws them), and train/val lists (every fourth image in val)."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    colours = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(len(VOC_CLASSES) + 1)]
    width, height = VOC_SIZE
    splits: dict[str, list[str]] = {"train": [], "val": []}
    for index in range(count):
        image_id = f"2007_{index:06d}"
        ramp = np.linspace(60, 190, width)[None, :, None]
        pixels = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        image, mask = Image.fromarray(pixels), Image.new("L", VOC_SIZE, 0)
        labels = rng.choice(len(VOC_CLASSES), size=int(rng.integers(1, 4)), replace=False) + 1
        slot = width // len(labels)
        for place, label in enumerate(labels.tolist()):
            side = int(rng.integers(60, min(slot, height) - 10))
            x0 = place * slot + int(rng.integers(4, slot - side - 4))
            y0 = int(rng.integers(4, height - side - 4))
            box = (x0, y0, x0 + side, y0 + side)
            _draw(ImageDraw.Draw(mask), label, (x0 - 3, y0 - 3, x0 + side + 3, y0 + side + 3), IGNORE)
            _draw(ImageDraw.Draw(mask), label, box, label)
            _draw(ImageDraw.Draw(image), label, box, colours[label])
        image.save(root / "JPEGImages" / f"{image_id}.jpg", quality=90)
        save_mask_png(np.asarray(mask), root / "SegmentationClass" / f"{image_id}.png")
        splits["val" if index % 4 == 3 else "train"].append(image_id)
    for split, ids in splits.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def _draw(draw: ImageDraw.ImageDraw, label: int, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if label % 3 == 0:
        draw.rectangle(box, fill=fill)
    elif label % 3 == 1:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)


def random_weights_overrides(epochs: int) -> dict:
    """What the check changes in `paper`: random weights for every network (so nothing is downloaded)
    and `epochs` passes per training stage; sizes, networks and scales stay the paper's."""
    random = {key: "random" for key in ("clip_pretrained", "cam_weights", "irn_weights", "seg_weights")}
    return {"models": random, **{stage: {"epochs": epochs} for stage in TRAINING_STAGES}}


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{names[0] if names else platform.processor() or 'unknown CPU'}, {os.cpu_count()} cores"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


def run_stages(dataset: Dataset, run: Path, config: PipelineConfig, device: torch.device) -> list[dict]:
    """Every stage of the run, one row each: seconds, images per second, peak GPU memory."""
    rows, started = [], {}

    def on_stage(stage: str, event: str) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if event == "start":
            if device.type == "cuda":  # cached blocks of earlier stages would count as this one's reserve
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            started[stage] = time.perf_counter()
        elif event == "end":
            seconds = time.perf_counter() - started[stage]
            passes = getattr(config, stage).epochs if stage in TRAINING_STAGES else 1
            row = {"stage": stage, "seconds": seconds, "images_per_s": len(dataset.images) * passes / seconds}
            if device.type == "cuda":
                row["peak_allocated_gib"] = torch.cuda.max_memory_allocated(device) / GIB
                row["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
            row["process_peak_rss_gib"] = peak_rss_gib()
            rows.append(row)

    run_pipeline(dataset, run, config, on_stage=on_stage)
    return rows


def reduced_precision_agreement(dataset: Dataset, run: Path, config: PipelineConfig, device: torch.device) -> dict:
    """make_cams' maps of every image at the precision the stage ran at (float16 autocast on CUDA)
    against float32, from the run's final CAM network: their absolute differences, and the share of
    pixels whose label agrees when the maps are cut at eval's background threshold and at the two
    seed thresholds (before the CRF)."""
    reduced = cam_precision(config, device)
    net, _ = load_cam_net(RunLayout(run).checkpoint(final_cam_stage(config)), device)
    fold_batchnorm(net).to(memory_format=torch.channels_last)
    section = config.make_cams
    thresholds = {
        "eval.cam_bg_threshold": config.eval.cam_bg_threshold,
        "make_seeds.fg_threshold": config.make_seeds.fg_threshold,
        "make_seeds.bg_threshold": config.make_seeds.bg_threshold,
    }
    total_diff, largest, values, pixels = 0.0, 0.0, 0, 0
    agreeing = dict.fromkeys(thresholds, 0)
    for record in dataset.images:
        image, keys = read_image(record.image), np.asarray(record.tags)
        low, full = (
            multiscale_cams(net, [image], [record.tags], section.scales, section.flip, precision)[0][0].cpu().numpy()
            for precision in (reduced, FLOAT32)
        )  # (n, H, W) each
        diff = np.abs(low - full)
        total_diff, largest, values = (
            total_diff + float(diff.sum()),
            max(largest, float(diff.max())),
            values + diff.size,
        )
        pixels += diff.shape[1] * diff.shape[2]
        for name, threshold in thresholds.items():
            agreeing[name] += int((cam_labels(low, keys, threshold) == cam_labels(full, keys, threshold)).sum())
    return {
        "precision": reduced.record(),
        "mean_abs_diff": total_diff / values,
        "max_abs_diff": largest,
        "pixel_agreement": {
            name: {"threshold": thresholds[name], "share": agreeing[name] / pixels} for name in agreeing
        },
    }


def print_table(rows: list[dict], agreement: dict, header: str) -> None:
    print(header)
    gpu = "peak_allocated_gib" in rows[0]
    print(f"{'stage':15s} {'seconds':>8s} {'images/s':>9s}" + ("  peak GPU GiB (allocated/reserved)" if gpu else ""))
    for row in rows:
        memory = f"  {row['peak_allocated_gib']:6.2f} / {row['peak_reserved_gib']:6.2f}" if gpu else ""
        print(f"{row['stage']:15s} {row['seconds']:8.1f} {row['images_per_s']:9.2f}{memory}")
    print(f"{'total':15s} {sum(row['seconds'] for row in rows):8.1f}")
    print(f"process peak RSS: {rows[-1]['process_peak_rss_gib']:.2f} GiB")
    precision = agreement["precision"]
    print(
        f"make_cams in {precision['name']} ({precision['reason']}) against float32, same network and images: "
        f"mean |diff| {agreement['mean_abs_diff']:.2e}, max |diff| {agreement['max_abs_diff']:.2e}"
    )
    for name, item in agreement["pixel_agreement"].items():
        print(f"  labels agree at {name} {item['threshold']:.2f}: {item['share']:.4%} of pixels")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="generated 500x375 images (default 100)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the images per training stage")
    parser.add_argument("--out", type=Path, default=Path("bench-output/gpu-check"), help="a new or empty folder")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        print(
            f"error: --device {args.device} asked for, but torch sees no CUDA device; this check is for a GPU "
            "(use --device cpu --images 2 for a smoke run of the script)",
            file=sys.stderr,
        )
        return 2
    if args.images < 1 or args.epochs < 1:
        parser.error("--images and --epochs must be at least 1")
    if args.out.exists() and any(args.out.iterdir()):
        print(f"error: {args.out} is not empty; give a new --out folder", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    config = resolve_config("paper", random_weights_overrides(args.epochs), {"device": args.device})
    dataset = load_dataset(write_voc_images(args.out / "dataset", args.images))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    header = (
        f"paper preset, random weights, {args.images} images {VOC_SIZE[0]}x{VOC_SIZE[1]}, "
        f"{args.epochs} epoch(s) per training stage, {device} ({name}), torch {torch.__version__}"
    )
    started = time.perf_counter()
    rows = run_stages(dataset, args.out / "run", config, device)
    agreement = reduced_precision_agreement(dataset, args.out / "run", config, device)
    print_table(rows, agreement, header)
    print(f"wall time with preflight and the comparison: {time.perf_counter() - started:.0f} s")
    figures = {"header": header, "stages": rows, "reduced_precision": agreement}
    (args.out / "gpu_check.json").write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
