"""What the demo shows of a job: its progress bar, the mIoU and chosen-word tables, and the figures."""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path

SHEET_IMAGES = 8
BAR_STEPS = 1000


def progress_bar(jobs: Iterable[dict]) -> dict:
    """A bar driven by each job state's overall progress, its stage and the stage's own fraction; returns the last."""
    from tqdm import tqdm

    job: dict = {}
    with tqdm(total=BAR_STEPS, file=sys.stderr, bar_format="{desc:<34}{bar}| {elapsed}<{remaining}") as bar:
        for job in jobs:
            stage = f"{job['stage']} {job['stage_progress']:4.0%}" if job["stage"] else job["state"]
            bar.set_description(stage, refresh=False)
            bar.n = round(BAR_STEPS * job["progress"])
            bar.refresh()
    return job


def stage_mious(metrics: dict) -> dict:
    """The CAM and mask mIoU with their per-class IoU, for whichever of the two the job evaluated."""
    return {
        label: {"miou": metrics["stages"][stage]["miou"], "iou": metrics["stages"][stage]["per_class_iou"]}
        for stage, label in (("eval_cams", "CAM"), ("eval_masks", "mask"))
        if stage in metrics["stages"]
    }


def background_floor(world: Path, images: list[dict], classes: list[str]) -> float | None:
    """mIoU of calling every pixel background, on the world's ground truth: what the masks must beat."""
    from ml.data.images import read_mask
    from ml.reports import background_only_miou

    truths = (read_mask(world / "masks" / f"{im['id']}.png") for im in images if im["has_mask"])
    return background_only_miou(truths, classes)


def print_report(
    stages: dict, archive: Path, selections: list[dict], classes: list[str], floor: float | None = None
) -> dict:
    """CAM and mask mIoU (all images, then per split) and the word shares per class; returns them."""
    from ml.reports import miou_table, word_share_table, word_shares
    from ml.spec.layout import METRICS

    print("\nIoU over all images (CAM: fixed background threshold; mask: after the random walk)")
    print(miou_table(stages, classes))
    if floor is not None:
        print(f"(for reference, calling every pixel background scores {_percent(floor)} mIoU)")
    with zipfile.ZipFile(archive) as zf:
        archived = json.loads(zf.read(METRICS))
    splits = {}
    for name, scores in archived.get("splits", {}).items():
        cams = archived.get("cams", {}).get("splits", {}).get(name, {})
        splits[name] = {"cam_miou": cams.get("miou"), "mask_miou": scores["miou"], "images": scores["images"]}
        print(
            f"split {name} ({scores['images']} images): CAM mIoU {_percent(cams.get('miou'))}, "
            f"mask mIoU {_percent(scores['miou'])}"
        )
    shares = word_shares(selections, classes)
    if shares:
        print("\nwords chosen for each class (share of the images tagged with it)")
        print(word_share_table(shares))
    return {"miou": stages, "background_only_miou": floor, "splits": splits, "word_shares": shares}


def write_figures(
    out: Path, world: Path, archive: Path, images: list[dict], selections: list[dict], classes: list[str]
) -> dict:
    """The contact sheet (held-out images first) and the radar of chosen words; returns their paths."""
    from ml.data.images import read_image, read_mask
    from ml.data.overlays import png_bytes
    from ml.reports import SheetRow, contact_sheet, figure_png, radar_figure, word_shares

    shown = sorted(images, key=lambda im: (im["split"] != "val", im["id"]))[:SHEET_IMAGES]
    masks = out / "masks"
    shutil.rmtree(masks, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(masks)  # our own service's archive, written by the export stage
    rows = []
    for image in shown:
        mask = read_mask(masks / "SegmentationClass" / f"{image['id']}.png")
        truth = read_mask(world / "masks" / f"{image['id']}.png") if image["has_mask"] else None
        picture = read_image(world / image["file"])
        rows.append(SheetRow(f"{image['id']} ({image['split']})", picture, truth, mask))
    files = {"masks": masks, "overlays": out / "overlays.png"}
    files["overlays"].write_bytes(png_bytes(contact_sheet(rows, classes)))
    shares = word_shares(selections, classes)
    if shares:
        files["radar"] = out / "chosen_words_radar.png"
        files["radar"].write_bytes(figure_png(radar_figure(shares, title="share of images choosing each word")))
    return files


def _percent(value: float | None) -> str:
    return f"{100 * value:.1f}%" if value is not None else "-"
